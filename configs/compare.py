r"""The main comparison: every outer-algorithm family against data-parallel.

Every arm trains the same byte LM on the same data (the stdlib corpus,
`small` subset, by-source shards over M = 4 replicas) with the same inner
AdamW and the same token budget (rounds × H inner steps per replica is fixed
by the base config); arms differ only in the outer algorithm, H, the outer
hyperparameters and the seed. The sweep is data (`get_sweep`), as big_vision
does it.

Run (the default sweep: 12 arms, about 9 minutes on 2 CPU cores):
  python experiments/compare.py --config=configs/compare.py --workdir=/tmp/fedjax_lab/compare
Other sweeps (see SWEEPS): --sweep=h, --sweep=lr, --sweep=scaffold,
--sweep=seeds, --sweep=full.
A tiny version for tests: --config=configs/compare.py:smoke --sweep=tiny.
"""

import itertools

import ml_collections

from configs import default
from configs import smoke

# The point of each family the default sweep runs. Outer lrs were picked at
# H = 25 on this budget from a few values each (final eval loss in brackets):
# diloco 0.5 [2.000] over 0.7 [2.025]; fedadam 0.03 [2.266] over 0.01
# [2.372] and 0.003 [2.638]; fedyogi 0.03 [2.265] over 0.01 [2.373];
# fedadagrad 0.05 [2.414] over 0.01 [2.982]; fedavgm 0.5 [2.348] over 0.2
# [2.442]; papa α 0.9 [2.219] over 0.975 [2.473]; demo η 3e-3 [1.867] over
# 3e-4 [2.605], 1e-3 [2.198], 5e-3 [1.916], 1e-2 [1.968]. Others: papers'
# defaults.
TUNED = {
    "ddp": {},
    "diloco": {"learning_rate": 0.5, "momentum": 0.9},
    "fedavg": {"learning_rate": 1.0},
    "fedavgm": {"learning_rate": 0.5, "momentum": 0.9},
    "fedadam": {"learning_rate": 0.03, "tau": 1e-3},
    "fedyogi": {"learning_rate": 0.03, "tau": 1e-3},
    "fedadagrad": {"learning_rate": 0.05, "tau": 1e-3},
    "easgd": {"beta": 0.9},
    "fedprox": {"mu": 0.01},
    "papa": {"alpha": 0.9},
    "papa_all": {},
    "papa_2": {},
    "demo": {"learning_rate": 3e-3},
    "scaffold": {"local_lr": 0.1, "server_lr": 1.0},
}
# SCAFFOLD's option II assumes plain constant-lr SGD inner steps; its arms
# (and a FedAvg control with the same inner SGD) override the inner optimizer.
SGD_INNER = {"inner.optimizer": "sgd", "inner.learning_rate": 0.1,
             "inner.warmup_steps": 0, "inner.decay": "constant",
             "inner.weight_decay": 0.0, "inner.grad_clip": 0.0,
             "inner.momentum": 0.0}
# The order of the table and the plots' legends.
ALGORITHMS = ("ddp", "diloco", "fedavg", "fedavgm", "fedadam", "fedyogi",
              "fedadagrad", "easgd", "fedprox", "papa", "papa_all", "demo")
# The outer learning rate grid of --sweep=lr (hparam swept per family).
LR_GRID = {
    "diloco": ("learning_rate", (0.3, 0.5, 0.7, 1.0)),
    "fedavgm": ("learning_rate", (0.3, 0.5, 0.7, 1.0)),
    "fedadam": ("learning_rate", (0.003, 0.01, 0.03, 0.1)),
    "fedyogi": ("learning_rate", (0.003, 0.01, 0.03, 0.1)),
    "fedadagrad": ("learning_rate", (0.01, 0.05, 0.1)),
    "easgd": ("beta", (0.5, 0.9)),
    "fedprox": ("mu", (0.001, 0.01, 0.1)),
    "papa": ("alpha", (0.5, 0.9, 0.975)),
    "demo": ("learning_rate", (1e-3, 3e-3, 1e-2)),
}
H_GRID = (10, 25, 50)  # Inner steps per round, --sweep=h and --sweep=full.


def _h_values(config):
  """H_GRID, or (H/2, H, 2H) of the base when H_GRID does not divide its budget."""
  budget = config.train.rounds * config.inner.steps
  grid = H_GRID if all(budget % h == 0 for h in H_GRID) else (
      config.inner.steps // 2, config.inner.steps, 2 * config.inner.steps)
  return tuple(h for h in grid if h >= 1 and budget % h == 0)
SEEDS = (0, 1, 2)  # --sweep=seeds and --sweep=full.


def get_config(size: str = "cpu"):
  """The shared base config. size: 'cpu' (the default) or 'smoke' (tests)."""
  if size == "smoke":
    config = smoke.get_config()
    config.train.checkpoint_every = 0  # No checkpoints: the tiny sweep is for tests.
    return config
  if size != "cpu":
    raise ValueError(f"configs/compare.py: size must be 'cpu' or 'smoke', got {size!r}")
  config = default.get_config()
  # The budget every arm gets: rounds × H = 600 inner steps per replica, i.e.
  # 600 × M=4 × B=8 × 64 bytes = 1.2M training tokens per arm.
  config.inner.batch_size = 8  # B: half the default, so 11 arms fit in ~10 CPU minutes.
  config.inner.steps = 25  # H of the base; arms with another H get rounds = 600 / H.
  config.train.rounds = 24  # 24 rounds × 25 steps = the 600-step budget.
  config.train.eval_every = 4  # Every 100 inner steps (scaled per arm to stay equal in steps).
  config.train.log_every = 4  # Every 100 inner steps (scaled likewise).
  config.train.checkpoint_every = 0  # No checkpoints: arms are short; rerun to resume per arm.
  config.train.tensorboard = True  # Event files per arm.
  config.mesh.num_devices = 0  # vmap on one device (fastest on a 2-core CPU).
  return config


def arm(config, algorithm: str, *, inner_steps=None, hparams=None, seed=0,
        name=None, extra=None):
  """One arm: overrides of the base config keeping the token budget equal
  (`extra`: more overrides, e.g. the inner optimizer)."""
  base_h = config.inner.steps
  h = inner_steps or base_h
  budget = config.train.rounds * base_h
  if budget % h:
    raise ValueError(f"sweep: H={h} does not divide the budget of {budget} steps")
  per = lambda rounds: max(1, rounds * base_h // h) if rounds else 0
  hparams = dict(TUNED[algorithm] if hparams is None else hparams)
  if name is None:
    hp = "".join(f"_{k[:2]}{v:g}" for k, v in sorted(hparams.items())
                 if isinstance(v, float) and k in ("learning_rate", "beta", "mu", "alpha"))
    name = f"{algorithm}_H{h}{hp if hparams != TUNED.get(algorithm) else ''}"
    name += f"_s{seed}" if seed else ""
  return {
      "name": name,
      "overrides": {
          "outer.name": algorithm,
          "outer.hparams": hparams,
          "inner.steps": h,
          "train.rounds": budget // h,
          "train.eval_every": per(config.train.eval_every),
          "train.log_every": per(config.train.log_every),
          "train.checkpoint_every": per(config.train.checkpoint_every),
          "train.seed": seed,
          "model.init_seed": seed,
          **(extra or {}),
      },
  }


def _default(config):
  return [arm(config, a) for a in ALGORITHMS]


def _tiny(config):
  return [arm(config, "ddp"), arm(config, "diloco"),
          arm(config, "fedavg", inner_steps=2 * config.inner.steps)]


def _h(config):
  return [arm(config, "ddp")] + [arm(config, "diloco", inner_steps=h)
                                 for h in _h_values(config)]


def _lr(config):
  arms = [arm(config, "ddp")]
  for algorithm, (key, values) in LR_GRID.items():
    for v in values:
      arms.append(arm(config, algorithm,
                      hparams=dict(TUNED[algorithm], **{key: v}),
                      name=f"{algorithm}_{key}{v:g}"))
  return arms


def _scaffold(config):
  """SCAFFOLD and FedAvg with the same plain-SGD inner steps, against ddp."""
  return [arm(config, "ddp"),
          arm(config, "scaffold", extra=SGD_INNER, name="scaffold_sgd"),
          arm(config, "fedavg", extra=SGD_INNER, name="fedavg_sgd")]


def _seeds(config):
  return [arm(config, a, seed=s) for a in ALGORITHMS for s in SEEDS]


def _full(config):
  """algorithm × H × outer lr × seed (ddp: × seed only): hours on a CPU."""
  arms = [arm(config, "ddp", seed=s) for s in SEEDS]
  arms += _scaffold(config)[1:]  # Its ddp arm is already there.
  for algorithm, (key, values) in LR_GRID.items():
    for h, v, s in itertools.product(_h_values(config), values, SEEDS):
      arms.append(arm(config, algorithm, inner_steps=h,
                      hparams=dict(TUNED[algorithm], **{key: v}), seed=s,
                      name=f"{algorithm}_H{h}_{key}{v:g}_s{s}"))
  return arms


SWEEPS = {"default": _default, "tiny": _tiny, "h": _h, "lr": _lr,
          "scaffold": _scaffold, "seeds": _seeds, "full": _full}


def get_sweep(config: ml_collections.ConfigDict, name: str = "default"):
  """The arms of sweep `name` over the base `config`: [{'name', 'overrides'}]."""
  if name not in SWEEPS:
    raise ValueError(f"sweep: unknown sweep {name!r}; known: {sorted(SWEEPS)}")
  return SWEEPS[name](config)
