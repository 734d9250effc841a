"""DiLoCo: "DiLoCo: Distributed Low-Communication Training of Language Models",
Douillard et al., arXiv 2311.08105 (Algorithm 1).

Each replica runs H steps of its inner optimizer (AdamW in the paper) from θ;
θ ← NesterovSGD(θ, Δ) with Δ = Σ_i w_i (θ − θ_i); every replica restarts from
the new θ and keeps its own inner optimizer state across rounds.
Nesterov as optax.sgd(nesterov=True): b ← μ·b + Δ; θ ← θ − lr·(Δ + μ·b).
"""

import optax

from fedjax_lab.outer import base


def diloco(*, learning_rate: float = 0.7, momentum: float = 0.9,
           nesterov: bool = True,
           reset_inner_state: bool = False) -> base.OuterAlgorithm:
  """DiLoCo's outer Nesterov step (lr 0.7, momentum 0.9: Table 5)."""
  lr = base.check_nonnegative("learning_rate", learning_rate)
  mu = base.check_unit_interval("momentum", momentum)
  tx = optax.sgd(lr, momentum=mu if mu > 0 else None,
                 nesterov=base.check_bool("nesterov", nesterov) and mu > 0)
  return base.optax_outer(tx, name="diloco",
                          reset_inner_state=base.check_bool(
                              "reset_inner_state", reset_inner_state))
