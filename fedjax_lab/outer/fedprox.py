"""FedProx: "Federated Optimization in Heterogeneous Networks", Li et al.,
arXiv 1812.06127.

Replica i minimises F_i(θ_i) + (μ/2)‖θ_i − θ‖², θ the global model at the
round's start (note the square and the 1/2). The outer rule is any registry
entry (weighted averaging, i.e. FedAvg, by default); μ = 0 is exactly that rule.
Stragglers' partial work counts, weighted by the examples they processed (the
engine's `num_steps` / `num_examples`).
"""

from typing import Any, Mapping, Optional

from fedjax_lab.outer import base
from fedjax_lab.outer.easgd import elastic_penalty


def fedprox(*, mu: float = 0.01, outer: str = "fedavg",
            outer_hparams: Optional[Mapping[str, Any]] = None,
            reset_inner_state: Optional[bool] = None) -> base.OuterAlgorithm:
  """FedProx: the proximal term (μ/2)‖θ_i − θ‖² on top of an outer rule.

  Args:
    mu: proximal coefficient μ ≥ 0 (paper sweeps {0.001, 0.01, 0.1, 0.5, 1}).
    outer: registry name of a once-a-round rule without a local loss term
      (not 'fedprox', 'ddp', 'demo', 'scaffold').
    outer_hparams: hyperparameters of that rule.
    reset_inner_state: None keeps the outer rule's choice.
  """
  from fedjax_lab import outer as outer_lib  # The registry imports this module.
  mu = base.check_nonnegative("mu", mu)
  if outer == "fedprox":
    raise ValueError("outer must be an outer rule other than 'fedprox'")
  inner_rule = outer_lib.get(outer, **dict(outer_hparams or {}))
  if inner_rule.every_step:
    raise ValueError(f"outer={outer!r} synchronises every step (no local "
                     "steps for a proximal term to act on); FedProx composes "
                     "with a rule that syncs once a round")
  if inner_rule.local_loss is not None:
    raise ValueError(f"outer={outer!r} already has a local loss term; FedProx "
                     "composes with rules that have none")
  if reset_inner_state is not None:
    inner_rule = inner_rule._replace(reset_inner_state=base.check_bool(
        "reset_inner_state", reset_inner_state))
  # The proximal term is (μ/2)‖θ_i − θ‖², the same form as EASGD's elastic one.
  return inner_rule._replace(
      local_loss=elastic_penalty(mu) if mu > 0 else None,
      name="fedprox")
