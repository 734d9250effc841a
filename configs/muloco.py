r"""MuLoCo (Thérien et al., arXiv 2505.23725): DiLoCo with Muon as inner optimizer.

default.py's model, data and token budget; each replica runs Muon on its
weight matrices (AdamW on LayerNorms and the tied embedding / output head,
fedjax_lab.muon) for H = 30 steps between DiLoCo's outer Nesterov steps.
The inner hyperparameters are the paper's defaults; the paper's outer step
is lr 0.9, momentum 0.8 (DiLoCo's own: 0.7, 0.9).

Run:
  python experiments/run.py --config=configs/muloco.py --workdir=/tmp/fedjax_lab/muloco
"""

from configs import default


def get_config():
  """default.py with MuLoCo's inner optimizer, H and outer step."""
  config = default.get_config()
  config.inner.optimizer = "muon"  # Muon on matrices, AdamW on the rest (fedjax_lab.muon).
  config.inner.learning_rate = 0.044  # η for both halves (paper: 0.044).
  config.inner.momentum = 0.9  # Muon's μ: M ← μM + G (paper: 0.9).
  config.inner.weight_decay = 0.00125  # λ for both halves, every parameter (paper: 0.00125).
  config.inner.steps = 30  # H (paper's example config: 30; its sweeps: 32).
  # H = 30 from default.py's 25 with (nearly) its budget: 33 × 30 = 990
  # inner steps per replica against 40 × 25 = 1000. The warm-up (50 steps)
  # and cosine decay to 0.1× are default.py's (paper: 500 warm-up steps of a
  # much longer run, cosine to 0.1×); b1/b2/eps (0.9/0.99/1e-8) already are
  # the paper's AdamW ones.
  config.train.rounds = 33  # 990 inner steps per replica (default.py: 1000).
  config.outer.name = "diloco"  # Outer Nesterov SGD on the averaged Δ.
  config.outer.hparams.learning_rate = 0.9  # Outer lr (paper: 0.9).
  config.outer.hparams.momentum = 0.8  # Outer momentum (paper: 0.8).
  config.outer.hparams.nesterov = True  # Nesterov, as DiLoCo (paper: yes).
  config.outer.hparams.reset_inner_state = False  # Replicas keep their inner state.
  return config
