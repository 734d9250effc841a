"""FedAvg and FedAvgM.

FedAvg: "Communication-Efficient Learning of Deep Networks from Decentralized
Data", McMahan et al., arXiv 1602.05629. θ ← Σ_i w_i θ_i, i.e. outer SGD with
lr 1 on Δ = Σ_i w_i (θ − θ_i); clients are stateless (inner state reset).

FedAvgM: "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", Hsu, Qi, Brown, arXiv 1909.06335 (and
Reddi et al., arXiv 2003.00295): outer SGD with heavy-ball momentum 0.9.
"""

import optax

from fedjax_lab.outer import base


def fedavg(*, learning_rate: float = 1.0,
           reset_inner_state: bool = True) -> base.OuterAlgorithm:
  """FedAvg: weighted parameter averaging (outer SGD, lr 1 by default).

  Args:
    learning_rate: server learning rate; 1.0 is plain averaging.
    reset_inner_state: clients are stateless in the paper.
  """
  lr = base.check_nonnegative("learning_rate", learning_rate)
  return base.optax_outer(optax.sgd(lr), name="fedavg",
                          reset_inner_state=base.check_bool(
                              "reset_inner_state", reset_inner_state))


def fedavgm(*, learning_rate: float = 1.0, momentum: float = 0.9,
            reset_inner_state: bool = True) -> base.OuterAlgorithm:
  """FedAvgM: outer heavy-ball SGD, b ← μ·b + Δ; θ ← θ − lr·b."""
  lr = base.check_nonnegative("learning_rate", learning_rate)
  mu = base.check_unit_interval("momentum", momentum)
  return base.optax_outer(optax.sgd(lr, momentum=mu), name="fedavgm",
                          reset_inner_state=base.check_bool(
                              "reset_inner_state", reset_inner_state))
