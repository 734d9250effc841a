"""The run's directory: checked before anything is built, locked while used.

`check_path` finds a workdir (or data dir) that cannot work in microseconds,
before the data is loaded; `Lock` makes a second run on the same workdir fail
at once, naming the holder; `check_resumable` compares the config with the
one the workdir was started with.
"""

import fcntl
import json
import os
import socket
from typing import Any, Dict, Optional, Tuple

from fedjax_lab.config_validation import ConfigError
from fedjax_lab.run import progress
from fedjax_lab.spec import show

CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
# The longest name a run writes below its workdir, with room to spare
# (checkpoints/<step>.orbax-checkpoint-tmp-<ts>/state/ocdbt.process_0/...).
_DEEPEST = 160

# Fields that may differ between a run and its resumption: they change what
# is logged or saved, not the trajectory. train.rounds may grow or shrink: the
# lr schedule keeps the first run's horizon (inner.schedule_steps = 0).
RESUMABLE_CHANGES = (
    "train.eval_every", "train.checkpoint_every", "train.keep",
    "train.log_every", "train.tensorboard", "train.nonfinite_policy",
    "train.max_empty_rounds", "data.prefetch", "data.data_dir",
    "data.eval_batches", "data.eval_batch_size", "mesh.num_devices",
    "engine.replica_mode", "train.rounds", "data.final_eval_batches",
    "mesh.model_devices", "mesh.min_shard_size",
)


# Workdirs made before a field existed resume as if it had this value; fields
# that were removed are ignored.
_ADDED_FIELDS = {"inner.schedule_steps": 0, "train.max_empty_rounds": 3,
                 "engine.replica_mode": "auto", "inner.optimizer": "adamw",
                 "inner.momentum": 0.0, "mesh.model_devices": 1,
                 "mesh.min_shard_size": 16384, "engine.num_fragments": 1,
                 "engine.overlap_steps": 0, "engine.merge_alpha": 0.0,
                 "train.num_clients": 0, "train.clients_per_round": 0,
                 "train.sampling": "uniform", "train.local_epochs": 0,
                 "train.max_local_steps": 0, "train.target_eval_loss": 0.0,
                 "model.remat": False, "train.outer_drop_prob": 0.0,
                 "data.final_eval_batches": 0, "data.eval_split": "",
                 # Made before the simulated clock: its defaults.
                 "clock.policy": "wait_all", "clock.step_seconds": 0.0,
                 "clock.device_flops": 1e12, "clock.speeds": [],
                 "clock.lognormal_sigma": 0.0, "clock.straggler_prob": 0.0,
                 "clock.straggler_factor": 4.0, "clock.bandwidth_gbps": 1.0,
                 "clock.latency_s": 1e-3, "clock.deadline_quantile": 0.75,
                 "clock.deadline_seconds": 0.0,
                 "clock.deadline_mode": "partial", "clock.dylu_min_steps": 1,
                 # Made before clock.policy='async'.
                 "clock.async_rule": "delayed_nesterov",
                 "clock.async_learning_rate": 0.0, "clock.async_momentum": 0.9,
                 "clock.async_delay": 0, "clock.async_grace": 0.0,
                 "clock.async_dylu": False,
                 # Made before per-island links.
                 "clock.bandwidths_gbps": [], "clock.latencies_s": [],
                 # Made before the stdlib corpus had a test split (v1.0.0,
                 # whose train split was larger): such a run cannot resume.
                 "data.test_split": ""}
_REMOVED_PREFIXES = ("train.fault.",)


def _existing_ancestor(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    path = os.path.dirname(path)
  return path


def check_path(field: str, path: str, *, write: bool, depth: int = _DEEPEST
               ) -> None:
  """A directory that exists or can be made, readable (and writable).

  Raises:
    ConfigError: naming `field`, for a file in the way, missing permissions
      or a path the filesystem cannot hold.
  """
  full = os.path.abspath(path)
  ancestor = _existing_ancestor(full)
  try:
    name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    path_max = os.pathconf(ancestor, "PC_PATH_MAX")
  except (OSError, ValueError):
    name_max, path_max = 255, 4096
  for part in full.split(os.sep):
    if len(part.encode()) > name_max:
      raise ConfigError(f"{field}: a path component is {len(part.encode())} "
                        f"bytes long, the filesystem allows {name_max}: "
                        f"{show(part, 60)}")
  if len(full.encode()) + depth > path_max:
    raise ConfigError(f"{field}: the path is {len(full.encode())} bytes long; "
                      f"with what a run writes below it, it must stay under "
                      f"{path_max - depth}")
  if os.path.lexists(full) and not os.path.isdir(full):
    raise ConfigError(f"{field}: {show(full, 200)} exists and is not a "
                      "directory")
  if not os.path.isdir(ancestor):
    raise ConfigError(f"{field}: {show(ancestor, 200)} is not a directory, "
                      f"so {show(full, 200)} cannot be made")
  mode = os.R_OK | os.X_OK | (os.W_OK if write else 0)
  if full == ancestor and not os.access(full, mode):
    raise ConfigError(f"{field}: {show(full, 200)} is not "
                      f"{'writable' if write else 'readable'} by this user")
  if full != ancestor and not os.access(ancestor, os.W_OK | os.X_OK):
    raise ConfigError(f"{field}: {show(full, 200)} does not exist and "
                      f"{show(ancestor, 200)} is not writable, so it cannot "
                      "be made")
  if write and full != ancestor:
    _probe_mkdir(field, full, ancestor)


def _probe_mkdir(field: str, full: str, ancestor: str) -> None:
  """Makes `full` and removes it again: permission bits do not tell whether a
  filesystem takes new directories (root passes os.access under /proc).

  Only what this call made is removed; a directory another process makes
  meanwhile (the other processes of a multi-process run probe the same
  workdir at the same time) is theirs and proves the path can be made."""
  todo, made = [], []
  head = full
  while head != ancestor:
    todo.append(head)
    head = os.path.dirname(head)
  try:
    for d in reversed(todo):
      try:
        os.mkdir(d)
      except FileExistsError:
        if not os.path.isdir(d):
          raise
        continue
      made.append(d)
  except OSError as e:
    raise ConfigError(f"{field}: {show(full, 200)} cannot be made: "
                      f"{e.strerror}") from None
  finally:
    for d in reversed(made):
      try:
        os.rmdir(d)
      except OSError:
        pass


def probe_lock(workdir: str) -> None:
  """Refuses at once (before data is loaded) when a run holds the workdir."""
  path = os.path.join(workdir, LOCK_FILE)
  if os.path.exists(path):
    lock = Lock(workdir)
    lock.acquire(record=False)
    lock.release()


class Lock:
  """An exclusive lock on `workdir/run.lock`, held while a run uses it.

  flock is released by the kernel when the process dies (SIGKILL included),
  so a killed run never leaves a stale lock behind.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self, *, record: bool = True) -> None:
    """Takes the lock, or raises ConfigError naming the run that holds it."""
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise ConfigError(
          f"workdir: {os.path.dirname(self.path)} is in use by a running "
          f"run ({holder}); wait for it to end, stop it, or use another "
          "--workdir") from None
    if record:
      f.seek(0)
      f.truncate()
      f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
      f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and not key.endswith("hparams"):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _set_only(hparams):
  return {k: v for k, v in (hparams or {}).items() if v is not None}


def _comparable(raw: Dict[str, Any], config):
  """(old, new) flat configs, comparable field by field: `raw` (a config as
  a run recorded it) gains the fields added since at their defaults and
  loses the removed ones; hparams left unset count as absent."""
  old = _flatten(raw)
  new = _flatten(json.loads(config.to_json()))
  for key in ("outer.hparams", "comm.hparams"):
    old[key], new[key] = _set_only(old.get(key)), _set_only(new.get(key))
  for key, value in _ADDED_FIELDS.items():
    old.setdefault(key, value)
  old = {k: v for k, v in old.items() if not k.startswith(_REMOVED_PREFIXES)}
  return old, new


def same_config(raw: Dict[str, Any], config) -> bool:
  """Whether a recorded config is `config`, up to the fields added since
  (at their defaults) and removed since: what a comparison may reuse."""
  old, new = _comparable(raw, config)
  return old == new


def check_resumable(workdir: str, config) -> Optional[Dict[str, Any]]:
  """The config a workdir was started with (None if new); it must match.

  Raises:
    ConfigError: a field that changes the trajectory differs.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"workdir: {path} cannot be read ({e}); use a new "
                      "--workdir") from None
  old, new = _comparable(raw, config)
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      if key in RESUMABLE_CHANGES:
        progress.warn("resuming %s with %s changed: %r -> %r", workdir, key,
                      old.get(key), new.get(key))
        continue
      raise ConfigError(
          f"{key}: workdir {workdir} holds a run made with {key}="
          f"{show(old.get(key))}, this config has {show(new.get(key))}; "
          "resume with the same config or use a new --workdir")
  return raw


def schedule_horizon(parts, started_with: Optional[Dict[str, Any]]
                     ) -> Tuple[int, str]:
  """inner.schedule_steps, resolved: (steps, where it came from)."""
  if parts.inner.schedule_steps:
    return parts.inner.schedule_steps, "inner.schedule_steps"
  if started_with is not None:
    rounds = started_with["train"]["rounds"]
    return rounds * parts.inner.steps, f"the first run's {rounds} rounds"
  return parts.train.rounds * parts.inner.steps, "train.rounds"


def write_config(workdir: str, config) -> None:
  """config.json, once per workdir (the config the run was started with)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json(indent=2))
    os.replace(path + ".tmp", path)
