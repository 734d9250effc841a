r"""SparseLoCo (Sarfi et al., arXiv 2508.15706): error feedback, top-k and 2-bit outer gradients.

default.py's model, data and token budget; replicas keep their AdamW state;
each sync sends 3.1% of each chunk of the error buffer at 2 bits a value.
H = 25 (the paper's 512M sweep: 15; templar: 30).

Run:
  python experiments/run.py --config=configs/sparseloco.py --workdir=/tmp/fedjax_lab/sparseloco
"""

from configs import default


def get_config():
  """default.py with SparseLoCo's outer step and codec."""
  config = default.get_config()
  config.outer.name = "sparseloco"  # Its own codec: leave comm.compressor 'none'.
  config.outer.hparams.learning_rate = 1.0  # α (paper's sweep: 1).
  config.outer.hparams.decay = 0.95  # β, the error buffer's decay (paper's sweep: 0.95).
  config.outer.hparams.chunk_size = 64  # Chunk side (paper: 64).
  config.outer.hparams.top_k = 128  # Kept per 64x64 chunk: 3.1% (paper: 128).
  config.outer.hparams.quant_bins = 4  # 2-bit values (paper: 4 bins).
  return config
