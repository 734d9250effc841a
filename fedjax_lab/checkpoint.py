"""Checkpoints of a whole run: TrainState + loader position + counters.

One orbax `CheckpointManager` step per saved round, with three items:
'state' (the engine's TrainState, restored onto its shardings), 'loader'
(the RoundLoader position, JSON) and 'meta' (cumulative counters, JSON).

Saves are asynchronous. orbax writes every step into
`<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only once every
item is committed, so a process killed mid-save leaves a tmp directory that
`all_steps()` never lists (and `cleanup_tmp_directories` removes on the next
start); a listed step is always complete.

A listed step that still fails to restore (files damaged after the fact, or
made by an incompatible version) is skipped with a warning and the previous
one is used; the damaged ones are then moved to `workdir/corrupt_checkpoints`
so later saves can reuse their step numbers. When no listed step restores,
`CheckpointError` is raised: a run never silently starts over.
"""

import os
import shutil
import time
from typing import Any, Dict, NamedTuple, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """The workdir has checkpoints but none can be restored."""


class Restored(NamedTuple):
  step: int
  state: Any
  loader: Dict[str, Any]
  meta: Dict[str, Any]


class Checkpointer:
  """Saves and restores (state, loader position, meta) under `directory`."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True,
            cleanup_tmp_directories=True))

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, loader_state: Dict[str, Any],
           meta: Dict[str, Any]) -> None:
    """Starts an asynchronous save (device buffers are copied before return)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        loader=ocp.args.JsonSave(loader_state),
        meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, abstract_state) -> Optional[Restored]:
    """The newest checkpoint that restores, or None when there is none.

    Args:
      abstract_state: the restore target (shapes, dtypes, shardings).

    Raises:
      CheckpointError: checkpoints exist but none restores.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            loader=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        restored = Restored(step, out["state"], dict(out["loader"]),
                            dict(out["meta"]))
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise many types for damaged files.
        logging.warning("checkpoint %s/%d cannot be restored (%s: %s); "
                        "trying the previous one", self.directory, step,
                        type(e).__name__, str(e)[:300])
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
        logging.warning("moved unreadable checkpoint %d to %s", step, dst)
    self._manager.close()
    self._manager = self._open()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
