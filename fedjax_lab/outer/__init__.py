"""The registry of outer algorithms: `get(name, **hparams)`.

A plain dict from name to factory (no registration at import time). Every
factory takes keyword-only hyperparameters and validates them.
"""

import inspect
from typing import Callable, Dict

from fedjax_lab.outer.base import optax_outer
from fedjax_lab.outer.base import OuterAlgorithm
from fedjax_lab.outer.base import ReplicaOps
from fedjax_lab.outer.base import Setup
from fedjax_lab.outer.base import SyncInputs
from fedjax_lab.outer.base import SyncResult
from fedjax_lab.outer.ddp import ddp
from fedjax_lab.outer.demo import demo
from fedjax_lab.outer.desloc import desloc
from fedjax_lab.outer.desloc import local_adam
from fedjax_lab.outer.diloco import diloco
from fedjax_lab.outer.easgd import easgd
from fedjax_lab.outer.fedavg import fedavg
from fedjax_lab.outer.fedavg import fedavgm
from fedjax_lab.outer.fedopt import fedadagrad
from fedjax_lab.outer.fedopt import fedadam
from fedjax_lab.outer.fedopt import fedyogi
from fedjax_lab.outer.fedopt import scale_by_fedopt
from fedjax_lab.outer.fedprox import fedprox
from fedjax_lab.outer.noloco import noloco
from fedjax_lab.outer.papa import papa
from fedjax_lab.outer.papa import papa_2
from fedjax_lab.outer.papa import papa_all
from fedjax_lab.outer.scaffold import check_inner as check_scaffold_inner
from fedjax_lab.outer.scaffold import scaffold
from fedjax_lab.outer.sparseloco import sparseloco

REGISTRY: Dict[str, Callable[..., OuterAlgorithm]] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "diloco": diloco,
    "easgd": easgd,
    "fedprox": fedprox,
    "papa": papa,
    "papa_all": papa_all,
    "papa_2": papa_2,
    "ddp": ddp,
    "demo": demo,
    "scaffold": scaffold,
    "sparseloco": sparseloco,
    "desloc": desloc,
    "local_adam": local_adam,
    "noloco": noloco,
}


def names():
  """The registered names, sorted."""
  return sorted(REGISTRY)


def hparams(name: str) -> Dict[str, object]:
  """The hyperparameters `name` accepts, with their defaults."""
  factory = _factory(name)
  return {k: p.default for k, p in inspect.signature(factory).parameters.items()}


def _factory(name: str) -> Callable[..., OuterAlgorithm]:
  if name not in REGISTRY:
    raise ValueError(f"outer.name: unknown outer algorithm {name!r}; "
                     f"known: {', '.join(names())}")
  return REGISTRY[name]


def get(name: str, **hparams_) -> OuterAlgorithm:
  """Builds the outer algorithm `name` with keyword hyperparameters.

  Raises:
    ValueError: unknown name (lists the known ones), unknown hyperparameter
      (lists the allowed ones) or a value outside its range (names the field).
  """
  factory = _factory(name)
  allowed = inspect.signature(factory).parameters
  unknown = sorted(set(hparams_) - set(allowed))
  if unknown:
    raise ValueError(
        f"outer algorithm {name!r}: unknown hyperparameter(s) {unknown}; "
        f"allowed: {', '.join(allowed) or 'none'}")
  try:
    return factory(**hparams_)
  except ValueError as e:
    raise ValueError(f"outer algorithm {name!r}: {e}") from None


__all__ = [
    "OuterAlgorithm", "ReplicaOps", "SyncInputs", "REGISTRY", "get", "names",
    "hparams", "optax_outer", "scale_by_fedopt", "ddp", "diloco", "easgd",
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "papa",
    "papa_all", "papa_2", "demo", "scaffold", "check_scaffold_inner", "sparseloco", "desloc",
    "local_adam", "noloco", "Setup", "SyncResult",
]
