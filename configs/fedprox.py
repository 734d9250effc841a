r"""FedProx (Li et al., arXiv 1812.06127): FedAvg + a proximal local term.

Each replica minimises F_i(θ_i) + (μ/2)‖θ_i − θ‖²; the outer step is FedAvg.

Run:
  python experiments/run.py --config=configs/fedprox.py --workdir=/tmp/fedjax_lab/fedprox
"""

import ml_collections

from configs import default


def get_config():
  """default.py with FedProx."""
  config = default.get_config()
  config.outer.name = "fedprox"  # Proximal local objective, averaging outer step.
  config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
      "mu": 0.01,  # Proximal strength μ (paper sweeps 0.001 … 1).
      "outer": "fedavg",  # The outer rule the proximal term composes with.
      "reset_inner_state": True,  # Stateless clients, as FedAvg.
  })
  return config
