r"""PAPA (Jolicoeur-Martineau et al., arXiv 2304.03094): population averaging.

Every round (k = H inner steps) each replica moves toward the population
mean: θ_i ← α·θ_i + (1 − α)·mean_j θ_j; the evaluated model is the mean.
Variants: papa_all (full averaging every round) and papa_2 (random pairs).

Run:
  python experiments/run.py --config=configs/papa.py --workdir=/tmp/fedjax_lab/papa
  python experiments/run.py --config=configs/papa.py:papa_all --workdir=/tmp/fedjax_lab/papa_all
"""

import ml_collections

from configs import default


def get_config(variant: str = "papa"):
  """variant: 'papa' (gradual, default), 'papa_all' or 'papa_2'."""
  if variant not in ("papa", "papa_all", "papa_2"):
    raise ValueError(f"configs/papa.py: variant must be papa, papa_all or "
                     f"papa_2, got {variant!r}")
  config = default.get_config()
  config.outer.name = variant  # Population averaging rule.
  hparams = {"reset_inner_state": False}  # Replicas keep their AdamW state.
  if variant == "papa":
    # The authors suggest α = 0.999^k for averaging every k steps: 0.975 at H = 25.
    hparams["alpha"] = 0.975
  config.outer.hparams = ml_collections.ConfigDict(hparams)  # As built above.
  return config
