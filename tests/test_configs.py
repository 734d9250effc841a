"""Configs and sweeps: every file validates, documents every field and its
run command; bad configs fail early with one message, exit 2 and an
untouched workdir."""

import ast
import glob
import os

import pytest

from _runner_util import REPO
from _runner_util import run_cli
from configs import compare as compare_config
from fedjax_lab import config_validation
from fedjax_lab import run as run_lib

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if not p.endswith("__init__.py"))
VARIANTS = {"fedavg.py": ["fedavg", "fedavgm"],
            "fedopt.py": ["fedadam", "fedyogi", "fedadagrad"],
            "papa.py": ["papa", "papa_all", "papa_2"],
            "compare.py": ["cpu", "smoke"]}


def _load(path):
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module("configs." + os.path.basename(path)[:-3])


def _configs():
  for path in CONFIG_FILES:
    module = _load(path)
    for variant in VARIANTS.get(os.path.basename(path), [None]):
      yield (os.path.basename(path), variant,
             module.get_config() if variant is None else module.get_config(variant))


def test_every_config_validates():
  names = set()
  for fname, variant, config in _configs():
    # As on a 1-device machine; mesh.num_devices=-1 then means 1 device.
    config_validation.validate(config, device_count=1)
    names.add(config.outer.name)
  # Every registry entry has a config.
  import fedjax_lab  # pylint: disable=g-import-not-at-top
  assert set(fedjax_lab.outer.names()) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_docstring_has_run_command_and_every_field_a_comment(path):
  source = open(path).read()
  doc = ast.get_docstring(ast.parse(source))
  assert doc and "python experiments/" in doc, path
  prev = ""
  in_dict = False  # Inside a `config.<...> = ConfigDict({...})` literal.
  for lineno, line in enumerate(source.splitlines(), 1):
    stripped = line.strip()
    if stripped == "config = ml_collections.ConfigDict()":
      pass  # The root.
    elif stripped.endswith("= ml_collections.ConfigDict()"):
      # A group: its comment is the line above.
      assert prev.startswith("#"), f"{os.path.basename(path)}:{lineno} group has no comment"
    elif stripped.startswith("config.") and "=" in stripped:
      assert "#" in line, f"{os.path.basename(path)}:{lineno} has no comment"
      in_dict = "ConfigDict({" in stripped
    elif in_dict:
      if stripped.startswith("})"):
        in_dict = False
      else:
        assert "#" in line, f"{os.path.basename(path)}:{lineno} has no comment"
    prev = stripped


@pytest.fixture
def tuned_every_setting(tmp_path, monkeypatch):
  """configs/tuned.json, plus the main points for any setting not tuned yet
  (the hetero sweeps read their own; these tests check arms, not values)."""
  import json  # pylint: disable=g-import-not-at-top
  with open(compare_config.TUNED_FILE) as f:
    data = json.load(f)
  settings = data["settings"]
  for setting in compare_config.SETTINGS:
    for key in compare_config.MAIN_ARMS:
      name = compare_config.setting_key(key, setting)
      settings.setdefault(name, settings[key])
  path = tmp_path / "tuned.json"
  path.write_text(json.dumps(data))
  monkeypatch.setattr(compare_config, "TUNED_FILE", str(path))


@pytest.mark.parametrize("sweep", sorted(compare_config.SWEEPS))
def test_sweeps_keep_the_token_budget_and_validate(sweep, tuned_every_setting):
  setting = "hetero" if "hetero" in sweep else "main"
  for size in ("cpu", "smoke"):
    base = compare_config.get_config(size)
    tokens = lambda c: (c.train.rounds * c.inner.steps * c.train.num_replicas
                        * c.inner.batch_size)
    budget = tokens(base)
    if "tune" in sweep:  # Tuning runs a fraction of the budget.
      budget //= compare_config.TUNE_FRACTION
    arms = compare_config.get_sweep(base, sweep)
    assert len({a["name"] for a in arms}) == len(arms)
    for arm in arms:
      config = run_lib.apply_overrides(base, arm["overrides"])
      config_validation.validate(config, device_count=1)
      assert tokens(config) == budget, arm["name"]
      # Same data and model in every arm; the inner optimizer differs only in
      # the tuned lr, in B where M differs (M·B is kept), and for the arms
      # that need plain-SGD inner steps (SCAFFOLD and its FedAvg control),
      # by exactly compare_config.SGD_INNER; for MuLoCo by its Muon fields.
      model = lambda c: {k: v for k, v in c.model.items() if k != "init_seed"}
      # The data differ only by the setting's partition (SETTINGS).
      expected_data = run_lib.apply_overrides(
          base, compare_config.SETTINGS[setting]).data
      assert model(config) == model(base) and config.data == expected_data
      expected = dict(base.inner)
      if arm["overrides"].get("inner.optimizer") == "sgd":
        expected.update({k.split(".")[1]: v
                         for k, v in compare_config.SGD_INNER.items()})
      if arm["overrides"].get("inner.optimizer") == "muon":
        expected.update({k.split(".")[1]: v
                         for k, v in compare_config.MULOCO.items()
                         if k.startswith("inner.")})
      free = {"steps", "batch_size", "learning_rate"}
      assert {k: v for k, v in config.inner.items() if k not in free} == {
          k: v for k, v in expected.items() if k not in free}


def test_default_sweep_is_the_tuned_main_arms_over_seeds(tuned_every_setting):
  base = compare_config.get_config()
  arms = compare_config.get_sweep(base, "default")
  assert {a["group"] for a in arms} == {"ddp", "diloco", "fedadam"}
  assert [a["overrides"]["train.seed"] for a in arms
          if a["group"] == "ddp"] == [0, 1]
  # The hetero setting: the lead arms over 3 seeds on by_content islands, at
  # its own tuned points, with names that cannot clash with the main's.
  hetero = compare_config.get_sweep(base, "hetero")
  assert [a["group"] for a in hetero] == [
      k for k in ("ddp", "diloco", "diloco_m1", "fedadam") for _ in range(3)]
  assert all(a["overrides"]["data.partition"] == "by_content" for a in hetero)
  assert not {a["name"] for a in hetero} & {a["name"] for a in arms}
  assert all("data.partition" not in a["overrides"] for a in arms)
  full = compare_config.get_sweep(base, "main_full")
  # Every arm over 3 seeds, the default's runs among them (reused by name
  # and config in the same workdir).
  assert len(full) == 3 * len(compare_config.MAIN_ARMS)
  by_name = {a["name"]: a["overrides"] for a in full}
  assert all(by_name[a["name"]] == a["overrides"] for a in arms)
  algorithms = {a["overrides"]["outer.name"] for a in full}
  assert {"ddp", "diloco", "fedavg", "fedadam", "easgd", "fedprox", "papa",
          "demo"} <= algorithms
  for a in full:  # Each arm runs its tuned point.
    config = run_lib.apply_overrides(base, a["overrides"])
    point = compare_config.tuned(a["group"])
    for field, value in point.items():
      node = config
      for part in field.split("."):
        node = node[part]
      assert node == value, (a["name"], field)


# ---------------------------------------------------------------------------
# Bad configs: exit code 2, one message naming the field, workdir untouched.

BAD_CONFIG_FILE = '''"""A config with a typo."""
from configs import smoke
def get_config():
  config = smoke.get_config()
  config.train.unknown_field = 3
  return config
'''

BAD_CASES = {
    "unknown_override": (["--config.train.roundz=3"], "roundz"),
    "wrong_type": (["--config.train.rounds=lots"], "rounds"),
    "unknown_algorithm": (["--config.outer.name=fedmagic"], "outer.name"),
    "bad_outer_hparam": (["--config.outer.hparams.learning_rate=-1"],
                         "learning_rate"),
    "hparam_of_another_algorithm": (["--config.outer.name=fedadam",
                                     "--config.outer.hparams.momentum=0.5"],
                                    "outer.hparams.momentum"),
    "unknown_compressor": (["--config.comm.compressor=zip"], "comm.compressor"),
    "replicas_not_dividing_devices": (
        ["--config.mesh.num_devices=-1", "--config.train.num_replicas=3"],
        "train.num_replicas"),
    "batch_too_large": (["--config.inner.batch_size=10000000"],
                        "inner.batch_size"),
    "unknown_field_in_file": (None, "train.unknown_field"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_config_exits_2_naming_the_field(case, tmp_path):
  args, field = BAD_CASES[case]
  data_dir = tmp_path / "tfds"
  workdir = tmp_path / "run"
  if args is None:
    path = tmp_path / "typo.py"
    path.write_text(BAD_CONFIG_FILE)
    args = [f"--config={path}"]
  else:
    args = ["--config=configs/smoke.py"] + args
  proc = run_cli("run.py", args + [f"--workdir={workdir}",
                                   f"--config.data.data_dir={data_dir}"],
                 data_dir=data_dir, devices=2, timeout=120)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert field in errors[0], errors[0]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_validation_messages_in_process():
  import ml_collections  # pylint: disable=g-import-not-at-top

  from configs import smoke  # pylint: disable=g-import-not-at-top
  raw = smoke.get_config().to_dict()
  raw["inner"]["learning_rate"] = "fast"
  config = ml_collections.ConfigDict(raw)
  with pytest.raises(config_validation.ConfigError, match="inner.learning_rate"):
    config_validation.validate(config, device_count=1)
  config = smoke.get_config()
  config.train.seed = 2**32
  with pytest.raises(config_validation.ConfigError, match="train.seed"):
    config_validation.validate(config, device_count=1)
  config = smoke.get_config()
  config.mesh.num_devices = 4
  with pytest.raises(config_validation.ConfigError, match="mesh.num_devices"):
    config_validation.validate(config, device_count=2)
  # Before the devices are known (a CLI, before JAX's runtime starts) the
  # checks that need their count wait; the others run.
  config_validation.validate(config, device_count=None)
  config.mesh.num_devices = 0
  config.train.seed = -1
  with pytest.raises(config_validation.ConfigError, match="train.seed"):
    config_validation.validate(config, device_count=None)


@pytest.mark.parametrize("name", sorted(__import__("fedjax_lab").outer.names()))
def test_default_config_switches_algorithm_by_name(name):
  """--config.outer.name=X alone is enough: unset hparams take X's defaults."""
  from configs import default
  config = default.get_config()
  config.outer.name = name
  if hasattr(__import__("fedjax_lab").outer, f"check_{name}_inner"):
    # It needs another inner optimizer than default.py's AdamW: refused by
    # name (its own config file, configs/<name>.py, sets one).
    with pytest.raises(config_validation.ConfigError, match=r"^inner\."):
      config_validation.validate(config, device_count=4)
    return
  parts = config_validation.validate(config, device_count=4)
  assert parts.outer.hparams == {}
  assert parts.algorithm.name == name
