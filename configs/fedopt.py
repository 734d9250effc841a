r"""FedOpt (Reddi et al., arXiv 2003.00295): FedAdam, FedYogi, FedAdagrad.

Adaptive outer optimizers on Δ, in the paper's form (no bias correction,
v starts at τ²). The outer lr is the one to tune: each outer step moves a
coordinate by about lr, so lr must match the size of one round's Δ.

Run:
  python experiments/run.py --config=configs/fedopt.py --workdir=/tmp/fedjax_lab/fedadam
  python experiments/run.py --config=configs/fedopt.py:fedyogi --workdir=/tmp/fedjax_lab/fedyogi
"""

import ml_collections

from configs import default


def get_config(variant: str = "fedadam"):
  """variant: 'fedadam' (default), 'fedyogi' or 'fedadagrad'."""
  if variant not in ("fedadam", "fedyogi", "fedadagrad"):
    raise ValueError(f"configs/fedopt.py: variant must be fedadam, fedyogi or "
                     f"fedadagrad, got {variant!r}")
  config = default.get_config()
  config.outer.name = variant  # Adaptive outer optimizer.
  hparams = {
      "learning_rate": 0.01,  # Outer (server) lr η; tuned in configs/compare.py.
      "b1": 0.9,  # First-moment decay β1 (paper: 0.9).
      "tau": 1e-3,  # Adaptivity τ; v starts at τ² (paper: 1e-3).
      "bias_correction": False,  # Paper form; True = the authors' Keras Adam.
      "reset_inner_state": True,  # Stateless clients.
  }
  if variant != "fedadagrad":
    hparams["b2"] = 0.99  # Second-moment decay β2 (paper: 0.99).
  config.outer.hparams = ml_collections.ConfigDict(hparams)  # As built above.
  return config
