"""Checkpoints of a whole run: TrainState + loader position + counters.

One orbax `CheckpointManager` step per saved round, with three items:
'state' (the engine's TrainState, restored onto its shardings), 'loader'
(the RoundLoader position, JSON) and 'meta' (cumulative counters, JSON).

Saves are asynchronous. orbax writes every step into
`<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only once every
item is committed, so a process killed mid-save leaves a tmp directory that
`all_steps()` never lists (and `cleanup_tmp_directories` removes on the next
start); a listed step is always complete.

Once a step is final, process 0 records the SHA-256 of each of its files in
`<directory>.sha256/<step>.json`; a restore checks them first, so bit rot in
a step is found rather than restored. A step without a record (the process
died between the rename and the record) is restored unverified, with a
warning.

A listed step that fails to verify or restore (files damaged after the fact,
or made by an incompatible version) is skipped with a warning and the
previous one is used; the damaged ones are then moved to
`workdir/corrupt_checkpoints` so later saves can reuse their step numbers.
When no listed step restores, `CheckpointError` is raised: a run never
silently starts over.
"""

import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict, NamedTuple, Optional

from absl import flags
from absl import logging
import jax
import orbax.checkpoint as ocp


def _barriers_off_the_devices() -> None:
  """Makes orbax's multi-process barriers go through JAX's coordination
  service instead of a device collective.

  orbax's default barrier (`sync_global_devices`) is a psum over every device,
  and its background save thread issues it while the training loop's own
  collectives are in flight; the processes can then order the two
  differently and gloo aborts the run ("Received data size doesn't match
  expected size", seen in CI). A barrier of the distributed client
  (`wait_at_barrier`, orbax's `experimental_orbax_use_distributed_barrier`)
  never meets a device collective. Library use without absl.app: the flags
  are marked parsed first (every other flag keeps its default).
  """
  if jax.process_count() == 1:
    return
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  flags.FLAGS.experimental_orbax_use_distributed_barrier = True


class CheckpointError(RuntimeError):
  """The workdir has checkpoints but none can be restored."""


class Restored(NamedTuple):
  step: int
  state: Any
  loader: Dict[str, Any]
  meta: Dict[str, Any]


def short(text: str, limit: int = 400) -> str:
  """One line; a long text keeps its start and its end (where causes are)."""
  text = " ".join(str(text).split())
  if len(text) <= limit:
    return text
  half = limit // 2
  return f"{text[:half]} [... {len(text) - limit} characters ...] {text[-half:]}"


def file_digests(step_dir: str) -> Dict[str, str]:
  """{relative path: sha256} of every file under `step_dir`."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      out[os.path.relpath(path, step_dir)] = digest.hexdigest()
  return out


class Checkpointer:
  """Saves and restores (state, loader position, meta) under `directory`."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    self.digest_dir = self.directory + ".sha256"
    self._keep = keep
    self._unrecorded = None  # A step saved whose digests are not yet written.
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    _barriers_off_the_devices()
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True,
            cleanup_tmp_directories=True))

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, loader_state: Dict[str, Any],
           meta: Dict[str, Any]) -> None:
    """Starts an asynchronous save (device buffers are copied before return).

    The previous save is finished and recorded first.
    """
    self._record()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        loader=ocp.args.JsonSave(loader_state),
        meta=ocp.args.JsonSave(meta)))
    self._unrecorded = step

  def _record(self) -> None:
    """Waits for the pending save, then writes its digests (process 0)."""
    if self._unrecorded is None:
      return
    self._manager.wait_until_finished()
    step, self._unrecorded = self._unrecorded, None
    if jax.process_index() != 0:
      return
    os.makedirs(self.digest_dir, exist_ok=True)
    step_dir = os.path.join(self.directory, str(step))
    if os.path.isdir(step_dir):
      path = os.path.join(self.digest_dir, f"{step}.json")
      with open(path + ".tmp", "w") as f:
        json.dump(file_digests(step_dir), f, sort_keys=True)
      os.replace(path + ".tmp", path)
    live = {str(s) for s in self._manager.all_steps()}
    for name in os.listdir(self.digest_dir):
      if name.endswith(".json") and name[:-5] not in live:
        os.remove(os.path.join(self.digest_dir, name))

  def _verify(self, step: int) -> None:
    """Raises ValueError when a file of `step` differs from its record."""
    path = os.path.join(self.digest_dir, f"{step}.json")
    if not os.path.exists(path):
      logging.warning("checkpoint %s/%d has no checksum record; restoring it "
                      "unverified", self.directory, step)
      return
    with open(path) as f:
      expected = json.load(f)
    actual = file_digests(os.path.join(self.directory, str(step)))
    for name in sorted(set(expected) | set(actual)):
      if expected.get(name) != actual.get(name):
        raise ValueError(f"file {name} does not match its SHA-256 recorded "
                         "at save time (damaged after it was written)")

  def restore_latest(self, abstract_state) -> Optional[Restored]:
    """The newest checkpoint that verifies and restores, or None when none.

    Args:
      abstract_state: the restore target (shapes, dtypes, shardings).

    Raises:
      CheckpointError: checkpoints exist but none restores.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        self._verify(step)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            loader=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        restored = Restored(step, out["state"], dict(out["loader"]),
                            dict(out["meta"]))
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise many types for damaged files.
        logging.warning("checkpoint %s/%d cannot be restored, trying the "
                        "previous one. Cause: %s", self.directory, step,
                        short(f"{type(e).__name__}: {e}"))
        bad.append(step)
        continue
      if bad:
        self._quarantine(bad)
      return restored
    if steps:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored (steps "
          f"{sorted(steps)}; see the warnings above). Restore them from a "
          "backup, or use a new --workdir to start over.")
    return None

  def _quarantine(self, steps) -> None:
    """Moves unreadable steps aside so their step numbers can be saved again."""
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory),
                            "corrupt_checkpoints")
      os.makedirs(target, exist_ok=True)
      for step in steps:
        dst = os.path.join(target, f"{step}-{int(time.time())}")
        shutil.move(os.path.join(self.directory, str(step)), dst)
        record = os.path.join(self.digest_dir, f"{step}.json")
        if os.path.exists(record):
          shutil.move(record, dst + ".sha256.json")
        logging.warning("moved unreadable checkpoint %d to %s", step, dst)
    self._manager.close()
    self._manager = self._open()

  def close(self) -> None:
    self._record()
    self._manager.wait_until_finished()
    self._manager.close()
