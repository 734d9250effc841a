"""Fuzz: generated bad configs, through the real command line.

Every one is given to experiments/run.py as `--config.<field>=<value>` flags
and must be refused before anything is written, with exit code 2 and one
line naming the field. The entry point runs in this process (its `main`
after `cli.parse_flags`, what `app.run` calls), so 240 cases cost no process
starts; tests/test_run_defects.py starts it as a subprocess.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from fedjax_lab import cli

NUM_CASES = 240
# Ranges a generated value must leave (field: (kind, lo, hi or None)).
NUMERIC = {
    "model.d_model": ("int", 1, None), "model.num_layers": ("int", 1, None),
    "model.num_heads": ("int", 1, None), "model.mlp_ratio": ("int", 1, None),
    "model.seq_len": ("int", 1, None), "model.init_seed": ("int", 0, 2**32 - 1),
    "model.dropout": ("float", 0.0, 1.0),
    "data.alpha": ("float", 0.0, None), "data.eval_batch_size": ("int", 1, None),
    "data.eval_batches": ("int", 0, None), "data.max_examples": ("int", 0, None),
    "data.prefetch": ("int", 0, None),
    "inner.steps": ("int", 1, None), "inner.batch_size": ("int", 1, None),
    "inner.learning_rate": ("float", 0.0, None),
    "inner.warmup_steps": ("int", 0, None),
    "inner.final_lr_fraction": ("float", 0.0, 1.0),
    "inner.schedule_steps": ("int", 0, None),
    "inner.b1": ("float", 0.0, 1.0), "inner.b2": ("float", 0.0, 1.0),
    "inner.eps": ("float", 0.0, None), "inner.weight_decay": ("float", 0.0, None),
    "inner.grad_clip": ("float", 0.0, None),
    "inner.momentum": ("float", 0.0, 1.0),
    "train.num_replicas": ("int", 1, None), "train.rounds": ("int", 1, None),
    "train.eval_every": ("int", 0, None),
    "train.checkpoint_every": ("int", 0, None), "train.keep": ("int", 1, None),
    "train.log_every": ("int", 1, None), "train.seed": ("int", 0, 2**32 - 1),
    "train.max_empty_rounds": ("int", 0, None),
    "mesh.num_devices": ("int", -1, 8),
    "outer.hparams.learning_rate": ("float", 0.0, None),
    "outer.hparams.momentum": ("float", 0.0, 1.0),
    "clock.bandwidth_gbps": ("float", 0.0, None),
    "clock.latency_s": ("float", 0.0, None),
    "clock.straggler_prob": ("float", 0.0, 1.0),
    "clock.straggler_factor": ("float", 1.0, None),
    "clock.lognormal_sigma": ("float", 0.0, None),
    "clock.deadline_seconds": ("float", 0.0, None),
    "clock.dylu_min_steps": ("int", 1, None),
}
CHOICES = ("model.kind", "model.dtype", "model.classifier", "data.subset",
           "data.partition", "inner.decay", "outer.name", "comm.compressor",
           "train.nonfinite_policy", "engine.replica_mode", "inner.optimizer",
           "clock.policy", "clock.deadline_mode")
# Fields of other algorithms and compressors: set, they are refused by name.
FOREIGN = ("outer.hparams.tau", "outer.hparams.beta", "outer.hparams.alpha",
           "outer.hparams.mu", "comm.hparams.block_size", "comm.hparams.bins",
           "comm.hparams.fraction")
CROSS = (  # (overrides, the field the message must name)
    ({"train.num_replicas": 3, "mesh.num_devices": -1}, "train.num_replicas"),
    ({"model.d_model": 30, "model.num_heads": 4}, "model.d_model"),
    ({"model.d_model": 12, "model.num_heads": 4}, "model.num_heads"),
    ({"inner.steps": 10**9}, "inner.steps"),
    ({"inner.batch_size": 100_000}, "inner.batch_size"),
    ({"data.eval_batch_size": 10**6}, "data.eval_batch_size"),
    ({"inner.momentum": 0.9}, "inner.momentum"),  # Not with AdamW.
    ({"outer.name": "scaffold"}, "inner.optimizer"),  # Needs plain SGD.
)


def _bad_numeric(rng, field):
  kind, lo, hi = NUMERIC[field]
  options = ["below", "type"]
  if hi is not None:
    options.append("above")
  if kind == "float":
    options += ["nan", "inf", "-inf"]
  choice = options[rng.integers(len(options))]
  if choice == "nan":
    return float("nan")
  if choice in ("inf", "-inf"):
    return float(choice)
  if choice == "type":
    return ["lots", "1e-3x", "", "None", "[1]"][rng.integers(5)]
  step = rng.uniform(1e-3, 100.0)
  if kind == "int":
    step = int(rng.integers(1, 2**34)) if choice == "above" else int(
        rng.integers(1, 1000))
    return (hi + step) if choice == "above" else (lo - step)
  if field.endswith(("b1", "b2", "dropout")) and choice == "above":
    return hi + step * 0  # 1.0 itself is out of range [0, 1).
  return (hi + step) if choice == "above" else (lo - step)


def _typo(rng, field):
  *parents, leaf = field.split(".")
  i = int(rng.integers(len(leaf)))
  mutated = leaf[:i] + "xyz"[rng.integers(3)] + leaf[i:]
  return ".".join(parents + [mutated])


def generate(seed=0, n=NUM_CASES):
  """n (overrides, field) pairs, reproducible from `seed`."""
  rng = np.random.default_rng(seed)
  fields = sorted(NUMERIC)
  cases = [(dict(o), f) for o, f in CROSS]
  while len(cases) < n:
    what = rng.integers(5)
    if what <= 1:
      field = fields[rng.integers(len(fields))]
      cases.append(({field: _bad_numeric(rng, field)}, field))
    elif what == 2:
      field = CHOICES[rng.integers(len(CHOICES))]
      cases.append(({field: "x" * int(rng.integers(1, 5)) + "nope"}, field))
    elif what == 3:
      field = fields[rng.integers(len(fields))]
      typo = _typo(rng, field)
      cases.append(({typo: 1}, typo))
    else:
      field = FOREIGN[rng.integers(len(FOREIGN))]
      value = "mean" if field.endswith("bins") else (
          8 if field.endswith("block_size") else 0.5)
      cases.append(({field: value}, field))
  return cases


def test_generator_is_seeded_and_big_enough():
  cases = generate()
  assert len(cases) >= 200
  assert repr(cases) == repr(generate())
  assert len({repr(c) for c in cases}) > 150  # Mostly distinct.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def _run_py():
  """experiments/run.py as a module (its flags defined once per process)."""
  name = "_fuzz_experiments_run_py"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "experiments", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
  return sys.modules[name]


def _flag_value(value):
  """A generated value as it would be typed on the command line."""
  return value if isinstance(value, str) else repr(value)


def _reset_flags():
  """Back to the state before parsing: config_flags defines one flag per
  `--config.<field>` override while parsing; those go."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in list(flags.FLAGS):
    if name.startswith("config."):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


def run_py_in_process(argv, monkeypatch):
  """The exit code of `run.py argv` run as app.run runs it (sys.argv set,
  flags parsed by `cli.parse_flags`, then `main`); None when it returned."""
  main = _run_py().main
  argv = ["run.py", *argv]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides.
  _reset_flags()
  try:
    main(cli.parse_flags(argv))
  except SystemExit as e:
    return e.code
  finally:
    _reset_flags()
  return None


# config_flags loads the config file anew at every parse.
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_every_generated_bad_config_is_one_line_naming_the_field_exit_2(
    tmp_path, data_dir, capsys, monkeypatch):
  smoke = os.path.join(REPO, "configs", "smoke.py")
  failures = []
  capsys.readouterr()
  for i, (overrides, field) in enumerate(generate()):
    workdir = tmp_path / f"case{i}"
    argv = [f"--config={smoke}", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            "--config.train.tensorboard=False"]
    argv += [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
    code = run_py_in_process(argv, monkeypatch)
    captured = capsys.readouterr()
    lines = [s for s in captured.err.splitlines() if s.strip()]
    if (code != 2 or len(lines) != 1 or not lines[0].startswith("error:")
        or field not in lines[0] or len(lines[0]) > 700 or workdir.exists()):
      failures.append((overrides, code, captured.err[-600:]))
  assert not failures, failures[:5]
  assert not os.listdir(tmp_path)  # Nothing written, for any case.
