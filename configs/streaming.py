r"""Streaming DiLoCo (Douillard et al., arXiv 2501.18512): DiLoCo synced by fragments.

default.py's DiLoCo with the parameters cut into P fragments (strided over
the transformer blocks, the rest balanced by size: fedjax_lab.fragments);
fragment p syncs after inner step (p + 1)·H/P of every round with its own
outer Nesterov state, its result lands τ inner steps late and is merged
as θ_i ← α·θ_i + (1 − α)·θ. Same model, data and token budget as default.py
(H = 24 so that P = 3 divides it; 42 rounds = 1008 steps per replica).

Run:
  python experiments/run.py --config=configs/streaming.py --workdir=/tmp/fedjax_lab/streaming
"""

from configs import default


def get_config():
  """default.py's DiLoCo with a 3-fragment streaming schedule."""
  config = default.get_config()
  config.outer.name = "diloco"  # Each fragment's outer step: Nesterov SGD.
  config.inner.steps = 24  # H: a multiple of num_fragments.
  config.train.rounds = 42  # 1008 inner steps per replica (default.py: 1000).
  config.engine.num_fragments = 3  # P (paper: fragments of 3 layers each).
  config.engine.overlap_steps = 2  # τ (paper: up to 5; 1-2 lose nothing).
  config.engine.merge_alpha = 0.5  # α (paper's best: 0.5).
  return config
