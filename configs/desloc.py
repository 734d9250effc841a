r"""DES-LOC (Iacob et al., arXiv 2505.22549): Adam moments averaged at their own periods.

default.py's model, data and token budget; parameters averaged every round
(Kx = H = 25), Adam's first moment every 3 rounds (Ku = 75) and its second
every 6 (Kv = 150), the paper's Ku = 3Kx, Kv = 6Kx. Local Adam is
`--config.outer.name=local_adam` (every period Kx).

Run:
  python experiments/run.py --config=configs/desloc.py --workdir=/tmp/fedjax_lab/desloc
"""

from configs import default


def get_config():
  """default.py with DES-LOC's syncs (inner AdamW, state kept)."""
  config = default.get_config()
  config.outer.name = "desloc"  # Averages params every round, moments periodically.
  config.outer.hparams.u_every = 3  # First moment every 3 rounds (Ku = 3 Kx).
  config.outer.hparams.v_every = 6  # Second moment every 6 rounds (Kv = 6 Kx).
  return config
