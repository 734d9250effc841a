"""README promises that had no test, one focused test each.

The multi-process ones (process 0 alone writes the metrics; the
--coordinator_address / --num_processes / --process_id and --distributed_auto
flags) are in tests/test_multiprocess.py, beside the runs they need.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from _runner_util import REPO  # noqa: F401  (puts the repo root on sys.path)
from configs import smoke
from fedjax_lab import checkpoint
from fedjax_lab import run as run_lib
from fedjax_lab.metrics import read_rows
from fedjax_lab.models import tasks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from fedjax_lab import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_stdlib_corpus(data_dir=str(path), subset="small")
  return path


def tiny_config(data_dir, **overrides):
  """smoke.py, cheaper still: 4 replicas (so meshes of 2, 4, 8 devices fit),
  no periodic evaluation, a one-batch final one, one fixed schedule."""
  config = smoke.get_config()
  config.data.data_dir = str(data_dir)
  config.train.tensorboard = False
  base = {"train.num_replicas": 4, "train.eval_every": 0,
          "train.checkpoint_every": 2, "data.final_eval_batches": 1,
          "inner.schedule_steps": 16}
  base.update(overrides)
  return run_lib.apply_overrides(config, base)


def restored_state(workdir, step):
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  return out["state"]


# ---------------------------------------------------------------------------
# "Checkpoints restore on any other mesh shape": a run resumed on another
# (replica × model) mesh ends where the uninterrupted run ends.

MESH_A = {"mesh.num_devices": 4, "mesh.model_devices": 2}  # 2 × 2.


@pytest.fixture(scope="module")
def first_half(data_dir, tmp_path_factory):
  """2 rounds on a 2 × 2 replica × model mesh (checkpointed at round 2)."""
  workdir = tmp_path_factory.mktemp("first_half") / "run"
  run_lib.train_and_evaluate(
      tiny_config(data_dir, **MESH_A, **{"train.rounds": 2}), str(workdir))
  return workdir


@pytest.mark.slow
@pytest.mark.xdist_group("readme_first_half")  # One first half.
def test_run_resumed_on_another_mesh_shape_ends_as_uninterrupted(
    data_dir, first_half, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(first_half, workdir)
  resumed = run_lib.train_and_evaluate(
      tiny_config(data_dir, **{"train.rounds": 4, "mesh.num_devices": 8,
                               "mesh.model_devices": 2}),  # 4 × 2.
      str(workdir))
  assert resumed["resumed_from"] == 2 and resumed["rounds"] == 4
  assert resumed["devices"]["mesh_devices"] == 4  # Replica slots: 4, was 2.
  ref_dir = tmp_path / "uninterrupted"
  ref = run_lib.train_and_evaluate(
      tiny_config(data_dir, **MESH_A, **{"train.rounds": 4}), str(ref_dir))
  loss = lambda d: [r["train/loss"] for r in read_rows(
      str(d / "metrics.jsonl"), "train")]
  np.testing.assert_allclose(loss(workdir), loss(ref_dir), rtol=1e-5)
  np.testing.assert_allclose(resumed["final_eval"]["loss"],
                             ref["final_eval"]["loss"], rtol=1e-5)
  a, b = restored_state(workdir, 4), restored_state(ref_dir, 4)
  for part in ("params", "replica_params"):
    for x, y in zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                 atol=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("readme_first_half")
def test_run_resumes_with_another_model_axis(data_dir, first_half, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(first_half, workdir)
  resumed = run_lib.train_and_evaluate(
      tiny_config(data_dir, **{"train.rounds": 4, "mesh.num_devices": 8,
                               "mesh.model_devices": 4}),  # 2 × 4.
      str(workdir))
  assert resumed["resumed_from"] == 2


# ---------------------------------------------------------------------------
# "lm_task(remat=True) (per-block rematerialisation)": same gradients.


def test_remat_gradients_equal_no_remat():
  kwargs = dict(d_model=32, num_layers=2, num_heads=2, mlp_ratio=2,
                seq_len=16)
  plain, remat = tasks.lm_task(**kwargs), tasks.lm_task(**kwargs, remat=True)
  shapes = jax.eval_shape(plain.init, jax.random.PRNGKey(0))
  assert jax.tree.structure(shapes) == jax.tree.structure(
      jax.eval_shape(remat.init, jax.random.PRNGKey(0)))
  rs = np.random.RandomState(0)  # Random params without compiling init.
  params = jax.tree.map(
      lambda s: jnp.asarray(0.2 * rs.randn(*s.shape), s.dtype), shapes)
  tokens = rs.randint(0, 256, (4, 17)).astype(np.int32)
  batch = {"tokens": jnp.asarray(tokens)}

  def lowered(task):
    return jax.jit(jax.value_and_grad(
        lambda p: task.loss_fn(p, batch)[0])).lower(params)

  plain_low, remat_low = lowered(plain), lowered(remat)
  # The remat program really rematerialises: its forward recomputation is
  # fenced by optimization barriers; the plain program has none.
  assert "optimization_barrier" in remat_low.as_text()
  assert "optimization_barrier" not in plain_low.as_text()
  (l0, g0), (l1, g1) = (plain_low.compile()(params),
                        remat_low.compile()(params))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g0)) > 1e-3


# ---------------------------------------------------------------------------
# "A step without a record ... is restored unverified, with a warning."


def test_checkpoint_without_sha_record_restores_unverified_with_warning(
    tmp_path, caplog):
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
           "step": np.int32(7)}
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  ckpt.save(3, state, {"position": 3}, {"tokens": 12})
  ckpt.close()
  record = tmp_path / "checkpoints.sha256" / "3.json"
  assert record.exists()  # Written at save time...
  record.unlink()  # ... and lost (the process died before writing it).
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  try:
    with caplog.at_level("WARNING"):
      restored = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  assert restored.step == 3
  assert restored.loader == {"position": 3} and restored.meta == {"tokens": 12}
  for k in state:
    np.testing.assert_array_equal(np.asarray(restored.state[k]), state[k])
  assert "no checksum record" in caplog.text and "unverified" in caplog.text
  assert not (tmp_path / "corrupt_checkpoints").exists()


# ---------------------------------------------------------------------------
# "A comparison reuses an arm's completed run only when its config is
# identical."


class _Rerun(Exception):
  """Raised instead of running an arm again."""


@pytest.mark.slow
def test_comparison_reuses_a_run_only_with_an_identical_config(
    data_dir, tmp_path, monkeypatch):
  from fedjax_lab.run import compare  # pylint: disable=g-import-not-at-top
  base = tiny_config(data_dir, **{"train.rounds": 2,
                                  "train.checkpoint_every": 0})
  arms = [{"name": "diloco", "overrides": {"outer.name": "diloco"}}]
  real = compare.train_and_evaluate
  calls = []

  def counting(config, workdir):
    calls.append(config.inner.learning_rate)
    return real(config, workdir)

  monkeypatch.setattr(compare, "train_and_evaluate", counting)
  first = compare.run_comparison(base, arms, str(tmp_path))
  assert calls == [base.inner.learning_rate]
  summary_path = tmp_path / "diloco" / "summary.json"
  written = summary_path.read_text()
  # The same config: reused, not run (nor its summary rewritten).
  again = compare.run_comparison(base, arms, str(tmp_path))
  assert len(calls) == 1 and summary_path.read_text() == written
  assert again[0]["final_eval"] == first[0]["final_eval"]
  # A run recorded before a field was added (here the per-island links) is
  # the same config when the new field is at its default: reused.
  older = json.loads(written)
  del older["config"]["clock"]["bandwidths_gbps"]
  summary_path.write_text(json.dumps(older))
  compare.run_comparison(base, arms, str(tmp_path))
  assert len(calls) == 1
  summary_path.write_text(written)
  # Any other config (here the inner learning rate): run again.
  def refuse(config, workdir):
    del workdir
    calls.append(config.inner.learning_rate)
    raise _Rerun()

  monkeypatch.setattr(compare, "train_and_evaluate", refuse)
  changed = run_lib.apply_overrides(base, {
      "inner.learning_rate": base.inner.learning_rate * 2})
  with pytest.raises(_Rerun):
    compare.run_comparison(changed, arms, str(tmp_path))
  assert calls[-1] == 2 * base.inner.learning_rate
  # A run that did not complete is not reused either.
  done = json.loads(written)
  summary_path.write_text(json.dumps(dict(done, status="stopped_nonfinite")))
  with pytest.raises(_Rerun):
    compare.run_comparison(base, arms, str(tmp_path))


class _Stop(Exception):
  pass


def test_a_rerun_in_a_workdir_leaves_no_stale_completed_summary(
    data_dir, tmp_path):
  """A run started again in a finished workdir (no checkpoint to resume
  from) rewrites metrics.jsonl from round 1: while it runs (a kill then
  writes no summary at all), the old 'completed' summary must not sit beside
  the new rows, or a comparison reuses it with its curves gone."""
  from fedjax_lab.run import loop as loop_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir, **{"train.rounds": 2,
                                    "train.checkpoint_every": 0})
  work = str(tmp_path / "w")
  assert loop_lib.train_and_evaluate(config, work)["status"] == "completed"
  path = os.path.join(work, "summary.json")
  seen = []

  def look(batch, r, replica_ids):
    del replica_ids
    if r == 1:  # Inside the second attempt, as a SIGKILL would find it.
      seen.append(os.path.exists(path) and json.load(open(path))["status"])
      raise _Stop()
    return batch

  with pytest.raises(_Stop):
    loop_lib.train_and_evaluate(config, work, batch_hook=look)
  assert seen == [False], seen
