r"""SCAFFOLD (Karimireddy et al., arXiv 1910.06378, option II): control variates.

Each replica corrects every local SGD gradient by c − c_i (server and
client control variates, kept across rounds) to cancel client drift on the
by-source (non-i.i.d.) shards; the outer step is FedAvg's average. Option II
needs plain SGD inner steps with a known constant lr, so this config swaps
default.py's AdamW for SGD (`fedjax_lab.outer.check_scaffold_inner` names
inner.optimizer, inner.decay, ... otherwise). A replica sends Δy and Δc:
twice FedAvg's bytes. On the compare budget (B = 8, 24 rounds of H = 25):
eval loss 2.584 at local lr 0.1, 2.589 at 0.3, diverged at 1.0 (FedAvg with
the same SGD: 2.562, 2.506, diverged).

Run:
  python experiments/run.py --config=configs/scaffold.py --workdir=/tmp/fedjax_lab/scaffold
"""

import ml_collections

from configs import default

LOCAL_LR = 0.1  # η_l: the inner SGD lr and SCAFFOLD's local_lr (see above).


def get_config():
  """default.py with SCAFFOLD and plain SGD inner steps."""
  config = default.get_config()
  config.inner.optimizer = "sgd"  # Plain SGD (option II divides by K·η_l).
  config.inner.learning_rate = LOCAL_LR  # η_l, constant.
  config.inner.warmup_steps = 0  # No warm-up: the lr must be known and constant.
  config.inner.decay = "constant"  # No decay, for the same reason.
  config.inner.weight_decay = 0.0  # Plain SGD: no decoupled weight decay.
  config.inner.grad_clip = 0.0  # Plain SGD: no clipping.
  config.outer.name = "scaffold"  # Control-variate corrected local SGD.
  config.outer.hparams = ml_collections.ConfigDict({  # The algorithm's hyperparameters:
      "local_lr": LOCAL_LR,  # η_l, must equal inner.learning_rate.
      "server_lr": 1.0,  # η_g, outer SGD lr on Δ (paper: 1).
  })
  return config
