r"""DeMo (Peng, Quesnelle, Kingma, arXiv 2411.19870): DisTrO's published optimizer.

Data-parallel family: every inner step each replica adds η·g to its own
momentum residual (decay β), sends only the top-k DCT coefficients of each
chunk of it, and the shared model takes a sign-SGD step on the per-coefficient
mean of what was sent. The inner AdamW of default.py is not used (DeMo brings
its own update); model, data and token budget are default.py's.

Run:
  python experiments/run.py --config=configs/demo.py --workdir=/tmp/fedjax_lab/demo
"""

import ml_collections

from configs import default


def get_config():
  """default.py with DeMo every step."""
  config = default.get_config()
  config.outer.name = "demo"  # Sparse DCT momentum exchange + sign-SGD every step.
  config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
      "learning_rate": 3e-3,  # η, no schedule: best of 3e-4…1e-2 here (paper: 4e-4, 300M).
      "compression_decay": 0.999,  # β, the residual's decay (paper: 0.999).
      "compression_topk": 32,  # k coefficients sent per DCT block (paper: 32).
      "compression_chunk": 64,  # Largest DCT block side (paper: 64).
      "weight_decay": 0.0,  # λ, decoupled (paper: 0).
  })
  return config
