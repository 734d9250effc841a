r"""NoLoCo (Kolehmainen et al., arXiv 2506.10911): gossip in random pairs, no all-reduce.

default.py's model, data and token budget; after every round each replica
averages with one random peer through its own momentum (α 0.7, μ 0.5, the
authors' noloco_mean_* settings; their H is 50).

Run:
  python experiments/run.py --config=configs/noloco.py --workdir=/tmp/fedjax_lab/noloco
"""

from configs import default


def get_config():
  """default.py with NoLoCo's outer step."""
  config = default.get_config()
  config.outer.name = "noloco"  # Pairwise exchange, no all-reduce.
  config.outer.hparams.learning_rate = 0.7  # α (authors: 0.7).
  config.outer.hparams.momentum = 0.5  # μ (authors: 0.5).
  config.outer.hparams.group_size = 2  # n, replicas per group (authors: 2).
  return config
