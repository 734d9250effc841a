r"""Cross-device federated learning: 100 clients, 10 sampled per round.

The FedAvg setting (McMahan et al., arXiv:1602.05629) on the built-in stdlib
corpus: the `small` subset's 169 source files merged (neighbours in path
order) into N = 100 clients of very different sizes (1 to ~2,250 sequences),
M = 10 of them sampled uniformly into the replica slots each round, each
running E = 1 local epoch of batch B = 8, capped at 10 local steps (so a
round's step axis is 10 and small clients take fewer steps, weighted by
their examples). Every arm shares plain constant-lr SGD inner steps, which
SCAFFOLD's option II needs (configs/scaffold.py); SCAFFOLD keeps each
client's c_i in the run's host store (N × params floats) and moves c by
|S|/N with N = train.num_clients. The sweep (`get_sweep`) runs FedAvg,
FedAdam, FedYogi, FedProx and SCAFFOLD on the same clients and samples.
Outer hyperparameters are the main comparison's starting points
(configs/compare.py DEFAULTS), not tuned for this setting.

Run one arm:
  python experiments/run.py --config=configs/population.py --workdir=/tmp/fedjax_lab/population
The sweep:
  python experiments/compare.py --config=configs/population.py \
      --workdir=/tmp/fedjax_lab/population_sweep
A tiny version for tests: --config=configs/population.py:smoke --sweep=tiny.
"""

import ml_collections

from configs import default
from configs import smoke

LOCAL_LR = 0.1  # η_l: every arm's inner SGD lr (and SCAFFOLD's local_lr).
# Eval loss the report's "rounds to target" column counts rounds to (FedAvg
# with this config reached 2.81 at round 20 and 2.62 at round 40).
TARGET = {"cpu": 2.8, "smoke": 4.0}
# Each arm's outer hyperparameters (configs/compare.py DEFAULTS, SCAFFOLD's paper ones).
ARMS = {
    "fedavg": {"learning_rate": 1.0},
    "fedadam": {"learning_rate": 0.03, "tau": 1e-3},
    "fedyogi": {"learning_rate": 0.03, "tau": 1e-3},
    "fedprox": {"mu": 0.01},
    "scaffold": {"local_lr": LOCAL_LR, "server_lr": 1.0},
}


def get_config(size: str = "cpu"):
  """The shared base config. size: 'cpu' (the default) or 'smoke' (tests)."""
  if size == "smoke":
    config = smoke.get_config()
    config.train.num_replicas = 2  # M = 2 clients per round.
    config.train.num_clients = 8  # N = 8 merged files.
    config.train.max_local_steps = 3  # Short local epochs.
    config.train.rounds = 4  # A few rounds.
    config.train.checkpoint_every = 0  # No checkpoints: the tiny sweep is for tests.
  elif size == "cpu":
    config = default.get_config()
    config.train.num_replicas = 10  # M = 10 clients per round (C = 0.1).
    config.train.num_clients = 100  # N = 100 clients (merged source files).
    config.train.max_local_steps = 10  # Cap on a client's local steps (the step axis).
    config.train.rounds = 40  # 40 rounds × 10 clients: each client sampled ~4 times.
    config.train.eval_every = 5  # Eight evaluations.
    config.train.log_every = 5  # Fetch metrics as often.
    config.train.checkpoint_every = 0  # No checkpoints: arms are short.
    config.inner.batch_size = 8  # B = 8 sequences per local step.
  else:
    raise ValueError(f"configs/population.py: size must be 'cpu' or 'smoke', "
                     f"got {size!r}")
  config.data.partition = "by_file"  # A client is a run of neighbouring source files.
  config.train.sampling = "uniform"  # Every 10-subset of clients equally likely.
  config.train.local_epochs = 1  # E = 1 local epoch per sampled client.
  config.train.target_eval_loss = TARGET[size]  # Rounds to target: the first eval at or below it.
  config.inner.optimizer = "sgd"  # Plain SGD for every arm (SCAFFOLD's option II needs it).
  config.inner.learning_rate = LOCAL_LR  # η_l, constant.
  config.inner.warmup_steps = 0  # No warm-up (a known, constant lr).
  config.inner.decay = "constant"  # No decay.
  config.inner.weight_decay = 0.0  # Plain SGD: no decoupled weight decay.
  config.inner.grad_clip = 0.0  # Plain SGD: no clipping.
  config.outer.name = "fedavg"  # The arm experiments/run.py runs; the sweep sets each.
  config.outer.hparams.learning_rate = 1.0  # FedAvg's server lr (the other hparams stay unset).
  config.mesh.num_devices = 0  # vmap on one device (M = 10 need not divide the devices).
  return config


def arm(algorithm: str, seed: int = 0):
  """One arm: the algorithm and its hyperparameters (and a seed)."""
  return {
      "name": f"{algorithm}_s{seed}" if seed else algorithm,
      "overrides": {
          "outer.name": algorithm,
          "outer.hparams": dict(ARMS[algorithm]),
          "train.seed": seed,
          "model.init_seed": seed,
      },
  }


SEEDS = (0, 1, 2)  # --sweep=seeds.
SWEEPS = {
    "default": lambda: [arm(a) for a in ARMS],
    "tiny": lambda: [arm("fedavg"), arm("scaffold")],
    "seeds": lambda: [arm(a, s) for a in ARMS for s in SEEDS],
}


def get_sweep(config: ml_collections.ConfigDict, name: str = "default"):
  """The arms of sweep `name`: [{'name', 'overrides'}] (config is unused)."""
  del config
  if name not in SWEEPS:
    raise ValueError(f"sweep: unknown sweep {name!r}; known: {sorted(SWEEPS)}")
  return SWEEPS[name]()
