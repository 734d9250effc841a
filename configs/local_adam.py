r"""Local Adam (DES-LOC's baseline, arXiv 2505.22549): params, m and v averaged every round.

Run:
  python experiments/run.py --config=configs/local_adam.py --workdir=/tmp/fedjax_lab/local_adam
"""

from configs import default


def get_config():
  """default.py with Local Adam's syncs (inner AdamW, state kept)."""
  config = default.get_config()
  config.outer.name = "local_adam"  # Params, m and v averaged every round (Kx = Ku = Kv = H).
  return config
