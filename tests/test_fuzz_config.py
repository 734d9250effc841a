"""Fuzz: generated bad configs, validated in process.

Every one must be refused by `train_and_evaluate` before anything is
written, with one line naming the field, and the entry points' `cli.fail`
turns that into exit code 2.
"""

import os

import numpy as np
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import smoke
from fedjax_lab import cli
from fedjax_lab import run as run_lib

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
}
CHOICES = ("model.kind", "model.dtype", "model.classifier", "data.subset",
           "data.partition", "inner.decay", "outer.name", "comm.compressor",
           "train.nonfinite_policy", "engine.replica_mode", "inner.optimizer")
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


def test_every_generated_bad_config_is_one_line_naming_the_field_exit_2(
    tmp_path, data_dir, capsys):
  base = smoke.get_config()
  base.data.data_dir = str(data_dir)
  base.train.tensorboard = False
  failures = []
  for i, (overrides, field) in enumerate(generate()):
    workdir = tmp_path / f"case{i}"
    try:
      config = run_lib.apply_overrides(base, overrides)
      run_lib.train_and_evaluate(config, str(workdir))
    except run_lib.ConfigError as e:
      message = str(e)
    else:
      failures.append((overrides, "accepted"))
      continue
    with pytest.raises(SystemExit) as exit_info:
      cli.fail(2, f"config: {message}")
    err = capsys.readouterr().err
    lines = err.splitlines()
    if (exit_info.value.code != 2 or len(lines) != 1 or field not in lines[0]
        or len(lines[0]) > 700 or workdir.exists()):
      failures.append((overrides, err))
  assert not failures, failures[:5]
  assert not os.listdir(tmp_path)  # Nothing written, for any case.
