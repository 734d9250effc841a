"""The registry of outer algorithms: `get(name, **hparams)`.

`REGISTRY` is a `fedjax_lab.registry.Registry` (name -> factory, fixed here;
no registration at import time); `names`, `hparams` and `get` are its
methods. Every factory takes keyword-only hyperparameters and validates them;
`get` prefixes a factory's ValueError with "outer algorithm '<name>': ".
"""

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
from fedjax_lab.registry import Registry

REGISTRY = Registry("outer algorithm", "outer.name", {
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
})
names = REGISTRY.names
hparams = REGISTRY.hparams
get = REGISTRY.get

__all__ = [
    "OuterAlgorithm", "ReplicaOps", "SyncInputs", "REGISTRY", "get", "names",
    "hparams", "optax_outer", "scale_by_fedopt", "ddp", "diloco", "easgd",
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "papa",
    "papa_all", "papa_2", "demo", "scaffold", "check_scaffold_inner", "sparseloco", "desloc",
    "local_adam", "noloco", "Setup", "SyncResult",
]
