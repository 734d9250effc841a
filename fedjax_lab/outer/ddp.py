"""The data-parallel baseline (DDP).

Every step each replica computes the gradient of its own batch, the gradients
are averaged (weighted by example counts) and one inner-optimizer update is
applied to one shared model. No outer step; the full gradient is communicated
every step. This is the reference low-communication methods are judged against
(DiLoCo, arXiv 2311.08105, Table 2).
"""

from fedjax_lab.outer import base


def ddp() -> base.OuterAlgorithm:
  """Data-parallel training: every step, the weighted mean of the replicas'
  gradients updates the shared model through the inner optimizer."""
  return base.OuterAlgorithm(init=lambda params: (), step_rule=lambda tx: tx,
                             reset_inner_state=False, name="ddp")
