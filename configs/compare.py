r"""The main comparison: outer algorithms against data-parallel, tuned on
validation, reported on test over seeds.

(Over 400 lines on purpose: the whole study's config in one file: arms, sweeps,
the tuning grid and protocol, the settings.)

Every arm trains the same byte LM on the same data (the stdlib corpus,
`small` subset, by-source shards) with the same inner AdamW and the same
token budget (rounds × H × M × B sequences: 2400 inner steps of 32
sequences of 64 bytes, about 4.9M tokens, ~42 tokens per parameter; arms
with another H get rounds = 2400 / H, the M = 1 control gets B = 32). Arms
differ in the outer algorithm, its hyperparameters, the inner learning rate
(tuned per arm), H and the seed. The sweeps are data (`get_sweep`), as
big_vision does it.

Protocol (docs/results.md):
1. `--sweep=tune` runs, per arm, a grid over the inner learning rate and the
   arm's outer hyperparameter (`TUNE_GRID`) at a quarter of the budget
   (600 steps, the lr schedule spanning them), seed 0, widens it where the
   best point is on an edge (`expand_sweep`: one more value along that
   field, the grid's own ratio, until the best is interior or at a bound of
   `TUNE_AXES` or MAX_EXPANSIONS values were added), and keeps each arm's
   point with the lowest final loss on the validation split (whole split),
   marked interior or at bound.
   The choices go to configs/tuned.json (committed), which every other sweep
   reads: re-running a comparison does not re-tune; re-running the tuning
   sweep reuses its completed runs (--noreuse to redo them).
2. The comparison sweeps run the chosen points at the full budget over
   several seeds and report the test split (whole split): mean ± std and
   min–max over seeds; curves are the seed mean with a min–max band.

Run (the default sweep: ddp, DiLoCo, FedAdam × 2 seeds, 13 min 11 s on 2
CPU cores):
  python experiments/compare.py --config=configs/compare.py --workdir=runs/compare
Other sweeps (see SWEEPS): --sweep=main_full (every arm × 3 seeds, 39 runs;
with the same --workdir it reuses the default sweep's 6 runs),
--sweep=tune (the widened grids of every main arm, over an hour),
--sweep=tune_frontier (the frontier methods' grids only, added to
tuned.json), --sweep=frontier (LEAD_ARMS plus those methods, 2 seeds),
--sweep=h, --sweep=scaffold. The heterogeneous setting (SETTINGS['hetero']):
--sweep=tune_hetero, then --sweep=hetero (LEAD_ARMS × 3 seeds) or
--sweep=hetero_full (every arm), in their own --workdir.
Tiny versions for tests: --config=configs/compare.py:smoke --sweep=tiny
(tiny_tune, tiny_hetero, tiny_tune_hetero).
"""

import os

import ml_collections

from configs import default
from configs import smoke
from fedjax_lab.run import tuning

# The outer hyperparameters an arm starts from before tuning (the papers'
# defaults where the grid does not set them).
DEFAULTS = {
    "ddp": {},
    "diloco": {"learning_rate": 0.7, "momentum": 0.9},
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
    "sparseloco": {"learning_rate": 1.0, "decay": 0.95},
    "desloc": {"u_every": 3, "v_every": 6},
    "local_adam": {},
    "noloco": {"learning_rate": 0.7, "momentum": 0.5, "group_size": 2},
}
# MuLoCo is DiLoCo with Muon inside (configs/muloco.py): the paper's outer
# step (lr 0.9, momentum 0.8) and Muon's μ and λ.
MULOCO = {"inner.optimizer": "muon", "inner.momentum": 0.9,
          "inner.weight_decay": 0.00125, "outer.hparams.momentum": 0.8,
          "outer.hparams.learning_rate": 0.9}
# The arms of the main comparison: key -> (algorithm, overrides). The M = 1
# DiLoCo control sees the same M·B sequences per step as ddp, on one replica
# (`_overrides` sets its B).
MAIN_ARMS = {
    "ddp": ("ddp", {}),
    "diloco": ("diloco", {}),
    "diloco_m1": ("diloco", {"train.num_replicas": 1}),
    "fedavg": ("fedavg", {}),
    "fedadam": ("fedadam", {}),
    "easgd": ("easgd", {}),
    "fedprox": ("fedprox", {}),
    "papa": ("papa", {}),
    "demo": ("demo", {}),
    "sparseloco": ("sparseloco", {}),
    "desloc": ("desloc", {}),
    "noloco": ("noloco", {}),
    "muloco": ("diloco", MULOCO),
}
# The methods published since DiLoCo (FRONTIER_ARMS, below) are tuned by
# --sweep=tune_frontier, which adds their points to configs/tuned.json and
# keeps the others.
# The README's main command (--sweep=default): data-parallel against the two
# outer optimizers (Nesterov, Adam) over 2 seeds, 6 runs, 13 min on 2 CPU
# cores. The 3-seed tables are --sweep=main_full and --sweep=hetero_full;
# main_full's runs include the default's (same names and configs: reused).
DEFAULT_ARMS = ("ddp", "diloco", "fedadam")
DEFAULT_SEEDS = (0, 1)
SEEDS = (0, 1, 2)  # main_full's, hetero's, hetero_full's.
# The arms --sweep=hetero and --sweep=frontier lead with: the default's and
# DiLoCo's M = 1 control.
LEAD_ARMS = ("ddp", "diloco", "diloco_m1", "fedadam")
# The tuning grid per arm: the inner lr (DeMo has none: its sign-SGD step has
# its own lr) × the arm's outer hyperparameter. 3×3 points at most.
INNER_LRS = (4e-3, 1e-2, 2.5e-2)
_OUTER_GRID = {
    "ddp": {},
    "diloco": {"outer.hparams.learning_rate": (0.3, 0.5, 0.7)},
    "diloco_m1": {"outer.hparams.learning_rate": (0.3, 0.5, 0.7)},
    "fedavg": {},
    "fedadam": {"outer.hparams.learning_rate": (0.01, 0.03, 0.1)},
    "easgd": {"outer.hparams.beta": (0.5, 0.7, 0.9)},
    "fedprox": {"outer.hparams.mu": (0.001, 0.01, 0.1)},
    "papa": {"outer.hparams.alpha": (0.5, 0.9, 0.975)},
    "demo": {"outer.hparams.learning_rate": (1e-3, 3e-3, 1e-2)},
    # The frontier arms (FRONTIER_ARMS) get one axis of 3 points (the CPU
    # budget): their AdamW inner lr is DiLoCo's tuned 1e-2; MuLoCo's outer
    # step is the paper's, and Muon's lr (another scale: paper 0.044) is
    # what it varies.
    "sparseloco": {"outer.hparams.learning_rate": (0.7, 1.0, 1.4)},
    "desloc": {"outer.hparams.u_every": (1, 3, 6)},
    "noloco": {"outer.hparams.learning_rate": (0.5, 0.7, 0.9)},
    "muloco": {"inner.learning_rate": (0.01, 0.02, 0.044)},
}
FRONTIER_ARMS = ("sparseloco", "desloc", "noloco", "muloco")
TUNE_GRID = {key: ({} if key == "demo" else
                   {"inner.learning_rate": (1e-2,)} if key in FRONTIER_ARMS
                   else {"inner.learning_rate": INNER_LRS}) | grid
             for key, grid in _OUTER_GRID.items()}
TUNE_FRACTION = 4  # Tuning runs a quarter of the budget.
TUNE_SEED = 0
# Widening (fedjax_lab/run/tuning.py): when an arm's best point lies on an
# edge of its grid, the tuning sweeps add one value along that field, one step
# of the grid's own ratio further (in log x; in log(1 − x) for β, α), until
# the best point is interior or reaches a bound: the field's stated range
# below, or MAX_EXPANSIONS values added to one field (--max_expansions).
MAX_EXPANSIONS = 3
TUNE_AXES = {
    "inner.learning_rate": tuning.Axis(1e-4, 1.0),
    "outer.hparams.learning_rate": tuning.Axis(1e-4, 1.0),
    "outer.hparams.mu": tuning.Axis(1e-5, 1.0),  # FedProx's proximal weight.
    "outer.hparams.beta": tuning.Axis(0.01, 0.999, "log1m"),  # EASGD β = Mα.
    "outer.hparams.alpha": tuning.Axis(0.0, 0.999, "log1m"),  # PAPA: 0 = papa_all.
    "outer.hparams.u_every": tuning.Axis(1, 48, integer=True),  # DES-LOC, rounds.
}
# Per arm, where its grid already goes past TUNE_AXES (SparseLoCo's α, 1.4).
ARM_AXES = {"sparseloco": {"outer.hparams.learning_rate": tuning.Axis(1e-4, 2.0)}}
# The settings of the main comparison: the islands' data. 'main' is today's
# (by_source: mean JSD 0.00446, i.e. alike islands); 'hetero' clusters the
# sequences by their byte histograms into equal shards (mean JSD 0.0200,
# within 4% of the best equal-size partition found; docs/results.md).
# Same model, budget and arms; each setting is tuned on its own (tuned.json
# keys: 'diloco' for main, 'hetero/diloco' for hetero).
SETTINGS = {"main": {}, "hetero": {"data.partition": "by_content"}}
TUNED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "tuned.json")
# SCAFFOLD's option II assumes plain constant-lr SGD inner steps; its arms
# (and a FedAvg control with the same inner SGD) override the inner optimizer.
SGD_INNER = {"inner.optimizer": "sgd", "inner.learning_rate": 0.1,
             "inner.warmup_steps": 0, "inner.decay": "constant",
             "inner.weight_decay": 0.0, "inner.grad_clip": 0.0,
             "inner.momentum": 0.0}
H_GRID = (10, 25, 50, 100)  # Inner steps per round, --sweep=h.


def get_config(size: str = "cpu"):
  """The shared base config. size: 'cpu' (the default) or 'smoke' (tests)."""
  if size == "smoke":
    config = smoke.get_config()
    config.train.checkpoint_every = 0  # No checkpoints: the tiny sweep is for tests.
    return config
  if size != "cpu":
    raise ValueError(f"configs/compare.py: size must be 'cpu' or 'smoke', got {size!r}")
  config = default.get_config()
  # The budget every arm gets: rounds × H = 2400 inner steps per replica,
  # i.e. 2400 × M=4 × B=8 × 64 bytes = 4.9M training tokens per arm.
  config.inner.batch_size = 8  # B per replica: M·B = 32 sequences per step.
  config.inner.steps = 25  # H of the base; arms with another H get rounds = 2400 / H.
  config.train.rounds = 96  # 96 rounds × 25 steps = the 2400-step budget.
  config.train.eval_every = 8  # Every 200 inner steps (scaled per arm to stay equal in steps).
  config.train.log_every = 8  # Every 200 inner steps (scaled likewise).
  config.train.checkpoint_every = 0  # No checkpoints: arms are short; rerun to resume per arm.
  config.train.tensorboard = True  # Event files per arm.
  config.data.eval_batches = 8  # Curves: a fixed stratified sample of 512 sequences per split.
  config.mesh.num_devices = 0  # vmap on one device (fastest on a 2-core CPU).
  return config


def arm(config, algorithm: str, *, inner_steps=None, hparams=None, seed=0,
        name=None, extra=None, group=None):
  """One arm: overrides of the base config keeping the token budget equal
  (`extra`: more overrides, applied last, e.g. the inner optimizer; `group`:
  the setting the arm is a seed of, for the report's seed statistics)."""
  base_h = config.inner.steps
  h = inner_steps or base_h
  budget = config.train.rounds * base_h
  if budget % h:
    raise ValueError(f"sweep: H={h} does not divide the budget of {budget} steps")
  per = lambda rounds: max(1, rounds * base_h // h) if rounds else 0
  hparams = dict(DEFAULTS[algorithm] if hparams is None else hparams)
  if name is None:
    name = f"{algorithm}_H{h}" + (f"_s{seed}" if seed else "")
  return {
      "name": name,
      "group": group or name,
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


def setting_key(key: str, setting: str = "main") -> str:
  """The tuned.json key of arm `key` in `setting` ('diloco', 'hetero/diloco')."""
  if setting not in SETTINGS:
    raise ValueError(f"sweep: unknown setting {setting!r}; known: "
                     f"{sorted(SETTINGS)}")
  return key if setting == "main" else f"{setting}/{key}"


def _split_key(name: str):
  """(setting, arm key) of a tuned.json key."""
  setting, _, key = name.rpartition("/")
  return setting or "main", key


def tuned(key: str, path: str = None, setting: str = "main"):
  """The overrides tuning chose for arm `key` in `setting` (configs/tuned.json)."""
  path = path or TUNED_FILE
  settings = tuning.load(path)["settings"]
  name = setting_key(key, setting)
  if name not in settings:
    sweep = "tune" if setting == "main" else f"tune_{setting}"
    raise ValueError(f"{path}: no tuned point for arm {name!r} (tuned: "
                     f"{sorted(settings)}); run --sweep={sweep}")
  return dict(settings[name]["point"])


def axes_for(name: str):
  """{field: tuning.Axis} of the arm behind tuned.json key `name`."""
  return {**TUNE_AXES, **ARM_AXES.get(_split_key(name)[1], {})}


def _overrides(config, key: str):
  """(algorithm, overrides) of main arm `key`; fewer replicas than the base
  keep its global batch M·B (so the tokens per step stay equal)."""
  if key not in MAIN_ARMS:
    raise ValueError(f"sweep: unknown arm {key!r}; known: {sorted(MAIN_ARMS)}")
  algorithm, overrides = MAIN_ARMS[key]
  m = overrides.get("train.num_replicas")
  if m is not None:
    global_batch = config.train.num_replicas * config.inner.batch_size
    overrides = dict(overrides, **{"inner.batch_size": global_batch // m})
  return algorithm, overrides


def tuned_arm(config, key: str, *, seed=0, inner_steps=None, name=None,
              extra=None, setting: str = "main", point=None):
  """Main arm `key` (MAIN_ARMS) at its tuned point, for seed `seed`, in
  `setting` (SETTINGS: its data overrides; its own tuned point unless
  `point` is given; arm names of a setting other than main are prefixed)."""
  algorithm, overrides = _overrides(config, key)
  group = key if inner_steps is None else f"{key}_H{inner_steps}"
  prefix = "" if setting == "main" else f"{setting}_"
  chosen = tuned(key, setting=setting) if point is None else point
  return arm(config, algorithm, inner_steps=inner_steps, seed=seed,
             name=name or f"{prefix}{group}_s{seed}", group=group,
             extra={**overrides, **SETTINGS[setting], **chosen,
                    **(extra or {})})


def _short(config, fraction: int = TUNE_FRACTION):
  """The tuning runs' config: 1/fraction of the budget, no curves."""
  short = config.copy_and_resolve_references()
  short.train.rounds = max(1, config.train.rounds // fraction)
  short.train.eval_every = 0  # Only the final evaluation: no curves needed.
  short.train.tensorboard = False
  return short


def _tuning_arm(config, name: str, point, fraction: int = TUNE_FRACTION):
  """The tuning run of tuned.json key `name` at `point`, seed TUNE_SEED."""
  setting, key = _split_key(name)
  algorithm, overrides = _overrides(config, key)
  label = "_".join(f"{f.split('.')[-1][:2]}{v:g}" for f, v in point.items())
  prefix = "" if setting == "main" else f"{setting}_"
  a = arm(_short(config, fraction), algorithm, seed=TUNE_SEED,
          name=f"tune_{prefix}{key}" + (f"_{label}" if label else ""),
          extra={**overrides, **SETTINGS[setting], **point})
  return dict(a, setting=name, point=dict(point))


def tuning_arms(config, keys=tuple(MAIN_ARMS), fraction: int = TUNE_FRACTION,
                setting: str = "main"):
  """The grid of every arm in `keys` at 1/fraction of the budget, seed 0.

  Each arm carries 'setting' (its tuned.json key: `setting_key`) and 'point'
  (the grid's overrides), which `expand_sweep` widens and `after_sweep`
  hands to `tuning.choose`.
  """
  return [_tuning_arm(config, setting_key(key, setting), point, fraction)
          for key in keys for point in tuning.points_of(TUNE_GRID[key])]


def _tuning_grids(results):
  """{tuned.json key: its initial grid} of the settings in `results`."""
  return {r["setting"]: TUNE_GRID[_split_key(r["setting"])[1]]
          for r in results if "setting" in r}


def expand_sweep(name: str, config, results, max_expansions=MAX_EXPANSIONS):
  """After each pass of a tuning sweep: the arms that widen a grid whose best
  point is on an edge (`tuning.widen`); [] when every arm is done."""
  if "tune" not in name:
    return []
  more = []
  fraction = TUNE_FRACTION
  for setting, grid in _tuning_grids(results).items():
    evaluated = [{"point": r["point"],
                  "validation_loss": tuning.validation_loss(r)}
                 for r in results if r.get("setting") == setting]
    points, _ = tuning.widen(grid, evaluated, axes_for(setting),
                             max_expansions)
    more += [_tuning_arm(config, setting, p, fraction) for p in points]
  return more


_TUNE_SWEEPS = ("tune", "tiny_tune", "tune_frontier", "tune_hetero",
                "tiny_tune_hetero")


def after_sweep(name: str, config, results, workdir: str,
                max_expansions=MAX_EXPANSIONS) -> None:
  """After a tuning sweep: choose on validation, mark each choice interior or
  at a bound, save configs/tuned.json (keeping the file's other keys: another
  setting's, or the arms this sweep did not tune); the tiny ones write
  workdir/tuned.json. After a comparison: the data setting's heterogeneity
  (mean JSD, replica sizes) goes at the top of workdir/results.md."""
  if name not in _TUNE_SWEEPS:
    _write_setting_header(name, config, results, workdir)
    return
  chosen = tuning.mark_edges(tuning.choose(results), _tuning_grids(results),
                             axes_for, max_expansions)
  path = (TUNED_FILE if not name.startswith("tiny")
          else os.path.join(workdir, "tuned.json"))
  if path == TUNED_FILE and os.path.exists(path):
    chosen = {**tuning.load(path)["settings"], **chosen}
  protocol = {
      "selected_on": "final loss on the validation split (whole split), "
                     "lowest wins; the test split is not read",
      "horizon_steps": results[0]["steps"] if results else None,
      "budget_fraction": f"1/{TUNE_FRACTION}",
      "seed": TUNE_SEED,
      "grid": {k: {f: list(v) for f, v in g.items()}
               for k, g in TUNE_GRID.items()},
      "widening": {"max_expansions": max_expansions,
                   "axes": {f: [a.low, a.high, a.scale]
                            for f, a in TUNE_AXES.items()},
                   "arm_axes": {k: {f: [a.low, a.high, a.scale]
                                    for f, a in v.items()}
                                for k, v in ARM_AXES.items()}},
      "settings": SETTINGS,
  }
  tuning.save(path, chosen, protocol=protocol)
  with open(os.path.join(workdir, "tuning.md"), "w") as f:
    f.write(tuning.markdown(chosen))


def _setting_of_sweep(name: str) -> str:
  return "hetero" if "hetero" in name else "main"


def data_setting(config) -> dict:
  """The replica partition of `config`: method, mean JSD and shard sizes
  (the same call a run makes; cheap: no training)."""
  from fedjax_lab import config_schema  # pylint: disable=g-import-not-at-top
  from fedjax_lab import data as data_lib  # pylint: disable=g-import-not-at-top
  from fedjax_lab.run import build  # pylint: disable=g-import-not-at-top
  train_src = build.load_sources(config_schema.read(config))[0]
  shards = data_lib.partition(train_src, config.train.num_replicas,
                              method=config.data.partition,
                              alpha=config.data.alpha, seed=config.train.seed)
  sizes = [len(s) for s in shards]
  return {"partition": config.data.partition,
          "num_replicas": config.train.num_replicas,
          "mean_jsd": data_lib.heterogeneity(train_src, shards),
          "sizes": sizes}


def setting_header(name: str, info: dict) -> str:
  """The line at the top of a comparison's table: its islands' data."""
  sizes = info["sizes"]
  return (f"Setting: {name} — data.partition={info['partition']} over "
          f"M = {info['num_replicas']} replicas: mean JSD (byte histogram "
          f"of each replica vs the whole) {info['mean_jsd']:.5f}; replica "
          f"sizes {min(sizes):,}–{max(sizes):,} sequences (max/min "
          f"{max(sizes) / max(1, min(sizes)):.2f}).\n\n")


def _write_setting_header(name, config, results, workdir) -> None:
  path = os.path.join(workdir, "results.md")
  if config is None or not results or not os.path.exists(path):
    return
  from fedjax_lab.run import apply_overrides  # pylint: disable=g-import-not-at-top
  setting = _setting_of_sweep(name)
  info = data_setting(apply_overrides(config, SETTINGS[setting]))
  with open(path) as f:
    md = f.read()
  with open(path, "w") as f:
    f.write(setting_header(setting, info) + md)


def _default(config):
  return [tuned_arm(config, k, seed=s) for k in DEFAULT_ARMS
          for s in DEFAULT_SEEDS]


def _main_full(config):
  return [tuned_arm(config, k, seed=s) for k in MAIN_ARMS for s in SEEDS]


def _tune(config):
  return tuning_arms(config)


def _tune_frontier(config):
  return tuning_arms(config, FRONTIER_ARMS)


def _hetero(config):
  return [tuned_arm(config, k, seed=s, setting="hetero") for k in LEAD_ARMS
          for s in SEEDS]


def _hetero_full(config):
  return [tuned_arm(config, k, seed=s, setting="hetero") for k in MAIN_ARMS
          for s in SEEDS]


def _tune_hetero(config):
  return tuning_arms(config, setting="hetero")


def _tiny_hetero(config):
  """The hetero pipeline on the smoke config (the main setting's points)."""
  return [tuned_arm(config, k, seed=0, setting="hetero", point=tuned(k))
          for k in ("ddp", "diloco")]


def _tiny_tune_hetero(config):
  return tuning_arms(config, keys=("ddp", "diloco"), setting="hetero")


def _frontier(config):
  """The lead arms and the frontier methods over 2 seeds (16 runs)."""
  return [tuned_arm(config, k, seed=s)
          for k in LEAD_ARMS + FRONTIER_ARMS for s in DEFAULT_SEEDS]


def _tiny(config):
  return [tuned_arm(config, "ddp", seed=s) for s in (0, 1)] + [
      tuned_arm(config, "diloco", seed=s) for s in (0, 1)] + [
          tuned_arm(config, "fedavg", inner_steps=2 * config.inner.steps)]


def _tiny_tune(config):
  return tuning_arms(config, keys=("ddp", "diloco"))


def _h(config):
  budget = config.train.rounds * config.inner.steps
  hs = [h for h in H_GRID if budget % h == 0] or [config.inner.steps]
  return [tuned_arm(config, "ddp")] + [tuned_arm(config, "diloco", inner_steps=h)
                                      for h in hs]


def _scaffold(config):
  """SCAFFOLD and FedAvg with the same plain-SGD inner steps, against ddp."""
  return [tuned_arm(config, "ddp"),
          arm(config, "scaffold", extra=SGD_INNER, name="scaffold_sgd"),
          arm(config, "fedavg", extra=SGD_INNER, name="fedavg_sgd")]


SWEEPS = {"default": _default, "main_full": _main_full, "tune": _tune,
          "tune_frontier": _tune_frontier, "frontier": _frontier,
          "h": _h, "scaffold": _scaffold, "tiny": _tiny,
          "tiny_tune": _tiny_tune, "hetero": _hetero,
          "hetero_full": _hetero_full, "tune_hetero": _tune_hetero,
          "tiny_hetero": _tiny_hetero, "tiny_tune_hetero": _tiny_tune_hetero}


def get_sweep(config: ml_collections.ConfigDict, name: str = "default"):
  """The arms of sweep `name` over the base `config`: [{'name', 'overrides'}]."""
  if name not in SWEEPS:
    raise ValueError(f"sweep: unknown sweep {name!r}; known: {sorted(SWEEPS)}")
  return SWEEPS[name](config)
