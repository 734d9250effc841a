r"""The data-parallel baseline (DDP): gradients averaged every step.

Same model, data, inner AdamW and token budget as the other configs; the
full fp32 gradient is communicated every inner step (H per round).

Run:
  python experiments/run.py --config=configs/ddp.py --workdir=/tmp/fedjax_lab/ddp
"""

import ml_collections

from configs import default


def get_config():
  """default.py as data-parallel training."""
  config = default.get_config()
  config.outer.name = "ddp"  # Gradient averaging every inner step; no outer step.
  config.outer.hparams = ml_collections.ConfigDict()  # ddp has no hyperparameters.
  return config
