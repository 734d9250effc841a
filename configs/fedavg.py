r"""FedAvg (McMahan et al., arXiv 1602.05629) and FedAvgM (outer momentum).

Inner AdamW as in default.py (FedAvg allows any local optimizer), reset every
round (stateless clients); outer θ ← Σ w_i θ_i (outer SGD, lr 1).

Run:
  python experiments/run.py --config=configs/fedavg.py --workdir=/tmp/fedjax_lab/fedavg
  python experiments/run.py --config=configs/fedavg.py:fedavgm --workdir=/tmp/fedjax_lab/fedavgm
"""

import ml_collections

from configs import default


def get_config(variant: str = "fedavg"):
  """'fedavg' (default) or 'fedavgm' (heavy-ball outer momentum 0.9)."""
  config = default.get_config()
  if variant == "fedavgm":
    config.outer.name = "fedavgm"  # Outer SGD with heavy-ball momentum.
    config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
        "learning_rate": 1.0,  # Outer lr (Reddi et al.: tuned; 1 with momentum 0.9).
        "momentum": 0.9,  # Heavy-ball momentum.
        "reset_inner_state": True,  # Stateless clients.
    })
  else:
    config.outer.name = "fedavg"  # Plain weighted averaging.
    config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
        "learning_rate": 1.0,  # 1 = θ ← Σ w_i θ_i exactly.
        "reset_inner_state": True,  # Stateless clients: inner AdamW state reset each round.
    })
  return config
