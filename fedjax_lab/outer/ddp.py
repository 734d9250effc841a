"""The data-parallel baseline (DDP).

Every step each replica computes the gradient of its own batch, the gradients
are averaged (weighted by example counts) and one inner-optimizer update is
applied to one shared model. No outer step; the full gradient is communicated
every step. This is the reference low-communication methods are judged against
(DiLoCo, arXiv 2311.08105, Table 2).
"""

from fedjax_lab.outer import base


def ddp() -> base.OuterAlgorithm:
  """Data-parallel training: the engine averages gradients every inner step."""

  def sync(inputs, state, ops):
    raise NotImplementedError("ddp has no sync; the engine averages gradients")

  return base.OuterAlgorithm(init=lambda params: (), sync=sync,
                             reset_inner_state=False, data_parallel=True,
                             name="ddp")
