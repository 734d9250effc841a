r"""DiLoCo (Douillard et al., arXiv 2311.08105): AdamW inner, Nesterov outer.

The default config already is DiLoCo; this file names it and spells out
every outer hyperparameter.

Run:
  python experiments/run.py --config=configs/diloco.py --workdir=/tmp/fedjax_lab/diloco
"""

import ml_collections

from configs import default


def get_config():
  """default.py with DiLoCo's outer step made explicit."""
  config = default.get_config()
  config.outer.name = "diloco"  # Outer Nesterov SGD on the averaged Δ.
  config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
      "learning_rate": 0.7,  # Outer lr (paper: 0.7).
      "momentum": 0.9,  # Outer momentum (paper: 0.9).
      "nesterov": True,  # Nesterov (the paper's best outer optimizer).
      "reset_inner_state": False,  # Replicas keep their AdamW state across rounds.
  })
  return config
