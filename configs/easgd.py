r"""Elastic Averaging SGD (Zhang, Choromanska, LeCun, arXiv 1412.6651).

Synchronous EASGD with communication period H: every round each worker
moves α = β/M of the way to the center and the center moves by the sum;
workers are not reset. The evaluated model is the center.

Run:
  python experiments/run.py --config=configs/easgd.py --workdir=/tmp/fedjax_lab/easgd
"""

import ml_collections

from configs import default


def get_config():
  """default.py with EASGD's elastic exchange."""
  config = default.get_config()
  config.outer.name = "easgd"  # Elastic averaging.
  config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
      "beta": 0.9,  # β = M·α (paper's recommendation: 0.9).
      "rho": 0.0,  # Per-step elastic penalty ρ/2‖θ_i − x̃‖² (0 = exchange only).
      "reset_inner_state": False,  # Workers keep their AdamW state.
  })
  return config
