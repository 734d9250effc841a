r"""Smoke config: a tiny byte LM for tests; a run takes seconds on a CPU.

Run:
  python experiments/run.py --config=configs/smoke.py --workdir=/tmp/fedjax_lab/smoke
"""

from configs import default


def get_config():
  """default.py, shrunk: 2 replicas × 4 inner steps of 4 sequences of 32 bytes."""
  config = default.get_config()
  config.model.d_model = 32  # Tiny transformer.
  config.model.num_layers = 1  # One block.
  config.model.num_heads = 2  # Head size 16.
  config.model.mlp_ratio = 2  # Narrow MLP.
  config.model.seq_len = 32  # Short sequences.
  config.data.eval_batch_size = 16  # Small eval batches.
  config.data.eval_batches = 2  # Two of them.
  config.data.final_eval_batches = 4  # The final evaluation: 64 examples per split.
  config.inner.steps = 4  # H = 4.
  config.inner.batch_size = 4  # B = 4.
  config.inner.warmup_steps = 4  # Short warm-up.
  config.train.num_replicas = 2  # M = 2.
  config.train.rounds = 12  # 48 inner steps per replica.
  config.train.eval_every = 4  # Three evaluations.
  config.train.checkpoint_every = 2  # Frequent checkpoints (resume tests).
  config.train.keep = 2  # Keep two.
  config.train.log_every = 2  # Frequent logs.
  config.train.tensorboard = True  # Exercise the event writer too.
  config.mesh.num_devices = 0  # vmap: works whatever the device count.
  return config
