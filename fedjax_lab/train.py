"""train_and_evaluate(config, workdir): the loop, eval, checkpoints, metrics.

The one importable entry point behind `experiments/run.py` (and the
notebook). A run:

1. validates the whole config, loads the data, builds the task, the inner
   optimizer, the outer algorithm, the compressor and the engine, all BEFORE
   anything is written (a user mistake is one `ConfigError` naming the
   field, and leaves the workdir untouched);
2. resumes from the newest restorable checkpoint in `workdir/checkpoints`
   (TrainState + data loader position + counters), or starts fresh;
3. runs rounds, fetching metrics from the device only every
   `train.log_every` rounds (and before evaluations and checkpoints), and
   evaluates `engine.eval_params(state)` on the held-out split every
   `train.eval_every` rounds;
4. writes `metrics.jsonl` and TensorBoard event files (process 0 only),
   checkpoints every `train.checkpoint_every` rounds (orbax, all processes),
   and finally `summary.json`.

Every metrics row carries the cumulative bytes each replica has sent (the
payload, and the ring all-reduce traffic), so curves can be drawn against
bytes as well as steps.

Non-finite replicas are dropped by the engine (weight 0, restarted from the
global model). `train.nonfinite_policy` decides what the run does about it:
'drop' counts them and logs a warning; 'stop' raises `TrainingStopped`
before the next checkpoint, so the last checkpoint is one from before the
bad round.
"""

import functools
import json
import math
import os
import platform
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fedjax_lab import config_validation
from fedjax_lab import data as data_lib
from fedjax_lab import models
from fedjax_lab import outer as outer_lib
from fedjax_lab.checkpoint import CheckpointError, Checkpointer
from fedjax_lab.comm import compress as compress_lib
from fedjax_lab.config_validation import ConfigError
from fedjax_lab.engine import Engine, replica_mesh
from fedjax_lab.metrics import MetricsWriter, write_json

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
FAULT_KEY = "fault"

# Fields that may differ between a run and its resumption: they change what
# is logged or saved, not the trajectory.
_RESUMABLE_CHANGES = (
    "train.eval_every", "train.checkpoint_every", "train.keep",
    "train.log_every", "train.tensorboard", "train.nonfinite_policy",
    "data.prefetch", "data.data_dir", "data.eval_batches",
    "data.eval_batch_size", "mesh.num_devices", "train.rounds",
)

__all__ = [
    "CheckpointError", "ConfigError", "TrainingStopped", "apply_overrides",
    "local_replica_ids", "make_inner_opt", "train_and_evaluate",
    "run_comparison", "versions",
]


class TrainingStopped(RuntimeError):
  """nonfinite_policy='stop' met a non-finite replica (or eval loss)."""


# ----------------------------------------------------------------------------
# Building blocks.


def make_schedule(inner: ml_collections.ConfigDict, total_steps: int):
  """Linear warm-up to the peak lr, then cosine/linear decay (or constant).

  lr(t) = peak · (t + 1) / warmup for t < warmup (never exactly 0, so no step
  is wasted); afterwards peak · f(progress) with f decaying from 1 to
  `final_lr_fraction` at the last step.
  """
  peak = float(inner.learning_rate)
  warmup = min(int(inner.warmup_steps), total_steps)
  final = float(inner.final_lr_fraction)
  span = max(total_steps - warmup, 1)
  decay = inner.decay

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    warm = peak * jnp.minimum(1.0, (t + 1.0) / max(warmup, 1))
    progress = jnp.clip((t - warmup) / span, 0.0, 1.0)
    if decay == "cosine":
      frac = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif decay == "linear":
      frac = 1.0 - (1.0 - final) * progress
    else:
      frac = jnp.ones_like(progress)
    return jnp.where(t < warmup, warm, peak * frac)

  return schedule


def make_inner_opt(inner: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up + decay and global-norm clipping (DiLoCo's inner opt).

  Weight decay applies to matrices only (ndim ≥ 2), not to LayerNorm scales
  and biases, as is usual for transformers.
  """
  tx = optax.adamw(make_schedule(inner, total_steps), b1=inner.b1, b2=inner.b2,
                   eps=inner.eps, weight_decay=inner.weight_decay,
                   mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
  if inner.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(inner.grad_clip), tx)
  return tx


def with_fault(loss_fn):
  """Fault injection: the loss is multiplied by (1 + mean(batch['fault'])).

  The runner sets batch['fault'] to 0 everywhere except NaN for the poisoned
  replica in the poisoned round, so that replica's loss and gradients become
  NaN exactly as a real divergence would (x · 1.0 is exact elsewhere).
  """

  def wrapped(params, batch, rng):
    batch = dict(batch)
    fault = batch.pop(FAULT_KEY)
    loss, aux = loss_fn(params, batch, rng)
    return loss * (1.0 + jnp.mean(fault)), aux

  return wrapped


def local_replica_ids(engine: Engine) -> List[int]:
  """The replicas whose data this process feeds: those on its devices.

  Without a mesh every replica lives on this (single) process.
  """
  m = engine.num_replicas
  if engine.mesh is None:
    return list(range(m))
  axis = engine.mesh.axis_names.index(engine.axis_name)
  local = engine.local_replicas
  me = jax.process_index()
  ids = set()
  devices = engine.mesh.devices
  for index in np.ndindex(devices.shape):
    if devices[index].process_index == me:
      block = index[axis]
      ids.update(range(block * local, (block + 1) * local))
  return sorted(ids)


def fetch_replicated(tree):
  """device_get for replicated values, also when they span processes.

  An array replicated over devices of several processes is not fully
  addressable, but every local copy holds the whole value.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def make_mesh(num_devices: int) -> Optional[jax.sharding.Mesh]:
  """config.mesh.num_devices → a replica mesh: 0 none, -1 all devices."""
  if num_devices == 0:
    return None
  return replica_mesh(None if num_devices == -1 else num_devices)


@functools.lru_cache(maxsize=4)
def _sources(kind: str, dataset: str, subset: str, data_dir: Optional[str],
             seq_len: int, max_examples: int):
  """(train, eval) sources, cached per process (comparisons share them)."""
  max_examples = max_examples or None
  if kind == "lm":
    return data_lib.lm_sources(dataset=dataset, data_dir=data_dir,
                               seq_len=seq_len, subset=subset,
                               max_examples=max_examples)
  return data_lib.image_sources(dataset=dataset, data_dir=data_dir,
                                max_examples=max_examples)


def _load_data_and_task(config):
  model, d = config.model, config.data
  try:
    train_src, eval_src = _sources(model.kind, d.dataset, d.subset,
                                   d.data_dir or None, model.seq_len,
                                   d.max_examples)
  except ValueError as e:
    raise ConfigError(f"data.dataset: {e}") from None
  if model.kind == "lm":
    task = models.lm_task(d_model=model.d_model, num_layers=model.num_layers,
                          num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                          seq_len=model.seq_len, dtype=model.dtype,
                          dropout=model.dropout)
  else:
    try:
      task = models.classifier_task(
          model=model.classifier, num_classes=train_src.num_classes,
          input_shape=train_src.images.shape[1:],
          hidden=tuple(model.hidden) or None, dtype=model.dtype)
    except ValueError as e:
      raise ConfigError(f"model.hidden: {e}") from None
  return task, train_src, eval_src


def versions() -> Dict[str, str]:
  """Versions of everything a result depends on."""
  import flax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import fedjax_lab  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
          else jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax_checkpoint": ocp.__version__, "numpy": np.__version__,
          "fedjax_lab": fedjax_lab.__version__}


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and not key.endswith("hparams"):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _check_resumable(workdir: str, config) -> Optional[Dict[str, Any]]:
  """The config a workdir was started with must match (but for harmless fields)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = _flatten(json.load(f))
  new = _flatten(json.loads(config.to_json()))
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      if key in _RESUMABLE_CHANGES:
        logging.warning("resuming %s with %s changed: %r -> %r", workdir, key,
                        old.get(key), new.get(key))
        continue
      raise ConfigError(
          f"{key}: workdir {workdir} holds a run made with {key}="
          f"{old.get(key)!r}, this config has {new.get(key)!r}; resume with "
          "the same config or use a new --workdir")
  return old


class _DropOrbaxInfo(logging.logging.Filter):
  """Drops orbax's INFO records (dozens per checkpoint); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or (
        "/orbax/" not in record.pathname)


def quiet_orbax_logs() -> None:
  """For entry points: keep absl INFO logs readable during checkpointing."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
    handler.addFilter(_DropOrbaxInfo())


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       replica_ids: Optional[Sequence[int]] = None
                       ) -> Dict[str, Any]:
  """Trains with periodic evaluation, checkpoints and metrics; resumes.

  Args:
    config: a run config (see configs/default.py for every field).
    workdir: where metrics, TensorBoard files, checkpoints and summary.json
      go; a workdir with checkpoints is resumed.
    replica_ids: the replicas this process feeds (default: those on its
      devices, `local_replica_ids`).

  Returns:
    The summary dict (also written to workdir/summary.json by process 0).

  Raises:
    ConfigError: a mistake in the config, found before anything is written.
    CheckpointError: checkpoints exist but none can be restored.
    TrainingStopped: nonfinite_policy='stop' met a non-finite value.
  """
  wall_start = time.time()
  config = ml_collections.ConfigDict(config.to_dict())  # Own copy.
  config_validation.validate(config, device_count=jax.device_count())
  tc, ic = config.train, config.inner
  m, h, b = tc.num_replicas, ic.steps, ic.batch_size
  mesh = make_mesh(config.mesh.num_devices)
  task, train_src, eval_src = _load_data_and_task(config)
  try:
    shards = data_lib.partition(train_src, m, method=config.data.partition,
                                alpha=config.data.alpha, seed=tc.seed)
  except ValueError as e:
    raise ConfigError(f"data.partition: {e}") from None
  config_validation.check_data(config, train_src, eval_src, shards)
  total_steps = tc.rounds * h
  loss_fn = with_fault(task.loss_fn) if tc.fault.round else task.loss_fn
  try:
    engine = Engine(
        loss_fn, inner_opt=make_inner_opt(ic, total_steps),
        outer=outer_lib.get(config.outer.name,
                            **config_validation.outer_hparams(config)),
        num_replicas=m, inner_steps=h, mesh=mesh,
        compressor=compress_lib.get(config.comm.compressor,
                                    **config_validation.comm_hparams(config)))
  except ValueError as e:
    raise ConfigError(f"engine: {e}") from None
  replica_ids = (local_replica_ids(engine) if replica_ids is None
                 else [int(r) for r in replica_ids])
  params = task.init(jax.random.PRNGKey(config.model.init_seed))
  _check_resumable(workdir, config)

  # ---- Nothing was written before this line. ----
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main and not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json(indent=2))
  checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                              keep=tc.keep)
  restored = checkpointer.restore_latest(engine.abstract_state(params))
  if restored is None:
    state = engine.init(params, seed=tc.seed)
    start, meta = 0, {"wall_s": 0.0, "best_eval_loss": None,
                      "best_eval_round": None, "nonfinite_replicas": 0,
                      "last_eval": None, "resumes": 0}
    logging.info("starting %s in %s: %d rounds, M=%d, H=%d, B=%d, %d params",
                 config.outer.name, workdir, tc.rounds, m, h, b,
                 task.num_params)
  else:
    state, start, meta = restored.state, restored.step, dict(restored.meta)
    meta["resumes"] = meta.get("resumes", 0) + 1
    logging.info("resuming %s in %s from round %d", config.outer.name,
                 workdir, start)

  loader = data_lib.RoundLoader(train_src, shards, batch_size=b,
                                inner_steps=h, seed=tc.seed,
                                replica_ids=replica_ids,
                                prefetch=config.data.prefetch)
  if restored is not None:
    loader.set_state(restored.loader)
  writer = MetricsWriter(workdir, enabled=is_main,
                         tensorboard=tc.tensorboard, resume_round=start)

  eval_data = list(data_lib.eval_batches(
      eval_src, batch_size=config.data.eval_batch_size,
      num_batches=config.data.eval_batches or None))
  eval_step = jax.jit(lambda p, batch: task.loss_fn(p, batch, None)[1])

  def evaluate(state) -> Dict[str, float]:
    p = engine.eval_params(state)
    sums = None
    for batch in eval_data:
      out = eval_step(p, batch)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    means = {k: float(v) / len(eval_data)
             for k, v in fetch_replicated(sums).items()}
    if "perplexity" in means:  # Of the mean loss, not the mean of exps.
      means["perplexity"] = math.exp(min(means["loss"], 700.0))
      means["bits_per_byte"] = means["loss"] / math.log(2.0)
    return means

  comm = engine.comm_bytes(params)
  per_example = config.model.seq_len if task.kind == "lm" else 1
  tokens_per_round = m * h * b * per_example

  def counters(r: int) -> Dict[str, Any]:
    return {"round": r, "step": r * h, "tokens": r * tokens_per_round,
            "payload_bytes": r * comm["payload_bytes"],
            "ring_bytes": r * comm["ring_bytes"]}

  fault_round, fault_replica = tc.fault.round, tc.fault.replica
  local_pos = {r: i for i, r in enumerate(replica_ids)}

  def add_fault(batch, r):
    fault = np.zeros((len(replica_ids), h, b), np.float32)
    if r == fault_round and fault_replica in local_pos:
      fault[local_pos[fault_replica]] = np.nan
    return {**batch, FAULT_KEY: fault}

  pending = []  # (round, device metrics), fetched at the next flush.
  last_train: Dict[str, Any] = {}
  last_saved = checkpointer.all_steps()[-1] if checkpointer.all_steps() else None
  status = "completed"
  loop_start = time.time()
  first_round_s = None
  rounds_this_run = 0
  side_s = [0.0]  # Time in evaluations and checkpoint saves (not rounds).

  def flush(r: int):
    nonlocal last_train
    fetched = fetch_replicated([mt for _, mt in pending])
    bad_rounds = []
    for (rr, _), mt in zip(pending, fetched):
      row = {"kind": "train", **counters(rr)}
      for k, v in mt.items():
        v = np.asarray(v)
        row[f"train/{k}"] = v.tolist() if v.ndim else float(v)
      row["time_s"] = meta["wall_s"] + time.time() - loop_start
      writer.write(row)
      n_bad = int(mt["nonfinite_replicas"])
      if n_bad:
        bad_rounds.append((rr, n_bad))
        meta["nonfinite_replicas"] = meta.get("nonfinite_replicas", 0) + n_bad
      last_train = row
    pending.clear()
    writer.flush()
    for rr, n_bad in bad_rounds:
      if tc.nonfinite_policy == "stop":
        raise TrainingStopped(
            f"round {rr}: {n_bad} replica(s) produced non-finite values and "
            "train.nonfinite_policy='stop'; "
            + (f"the last checkpoint is round {last_saved} (from before that "
               "round). " if last_saved else "no checkpoint was saved. ")
            + "Lower the learning "
            "rates, or use nonfinite_policy='drop' to drop such replicas.")
      logging.warning("round %d: %d replica(s) produced non-finite values; "
                      "dropped for the round and restarted from the global "
                      "model (nonfinite_policy='drop')", rr, n_bad)
    done = r - start
    elapsed = time.time() - loop_start
    rate = done / max(elapsed, 1e-9)
    steady = ((done - 1) / max(elapsed - (first_round_s or 0) - side_s[0], 1e-9)
              if done > 1 else rate)
    eta = (tc.rounds - r) / max(steady, 1e-9)
    if done and side_s[0]:
      eta += side_s[0] / done * (tc.rounds - r)
    logging.info(
        "round %d/%d (%.0f%%) | train loss %.4f | %.2f rounds/s, %.0f tok/s "
        "| %.3g bytes/replica | elapsed %s, ETA %s", r, tc.rounds,
        100.0 * r / tc.rounds, last_train.get("train/loss", float("nan")),
        steady, steady * tokens_per_round, r * comm["payload_bytes"],
        _fmt_time(elapsed), _fmt_time(eta))

  try:
    for r in range(start + 1, tc.rounds + 1):
      batch = loader.next()
      if fault_round:
        batch = add_fault(batch, r)
      t0 = time.time()
      state, mt = engine.round(state, batch)
      rounds_this_run += 1
      if first_round_s is None:
        jax.block_until_ready(state.round)
        first_round_s = time.time() - t0  # Mostly compilation.
      # Host numbers are known statically. Every device metric is
      # replicated, so any process can read it (fetch_replicated).
      pending.append((r, {k: v for k, v in mt.items()
                          if k not in ("payload_bytes", "ring_bytes")}))
      last = r == tc.rounds
      do_eval = last or (tc.eval_every and r % tc.eval_every == 0)
      do_ckpt = tc.checkpoint_every and (last or r % tc.checkpoint_every == 0)
      if do_eval or do_ckpt or last or r % tc.log_every == 0:
        flush(r)
      t_side = time.time()
      if do_eval:
        ev = evaluate(state)
        if not math.isfinite(ev["loss"]):
          msg = f"round {r}: eval loss is {ev['loss']}"
          if tc.nonfinite_policy == "stop":
            raise TrainingStopped(msg + f"; the last checkpoint is round {last_saved}")
          logging.warning(msg)
        writer.write({"kind": "eval", **counters(r),
                      **{f"eval/{k}": v for k, v in ev.items()},
                      "time_s": meta["wall_s"] + time.time() - loop_start})
        writer.flush()
        meta["last_eval"] = {"round": r, **ev}
        best = meta.get("best_eval_loss")
        if math.isfinite(ev["loss"]) and (best is None or ev["loss"] < best):
          meta["best_eval_loss"], meta["best_eval_round"] = ev["loss"], r
        logging.info("round %d eval: %s", r, ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(ev.items())))
      if do_ckpt:
        meta_now = dict(meta, wall_s=meta["wall_s"] + time.time() - loop_start)
        checkpointer.save(r, state, loader.get_state(), meta_now)
        last_saved = r
      side_s[0] += time.time() - t_side
    if start >= tc.rounds and meta.get("last_eval") is None:
      meta["last_eval"] = {"round": start, **evaluate(state)}
  except TrainingStopped:
    status = "stopped_nonfinite"
    raise
  except BaseException:
    status = "failed"
    raise
  finally:
    loader.close()
    checkpointer.close()
    meta["wall_s"] = meta["wall_s"] + time.time() - loop_start
    summary = _summary(
        config=config, status=status, task=task, engine=engine, meta=meta,
        rounds_done=start + rounds_this_run, comm=comm,
        tokens_per_round=tokens_per_round, last_train=last_train,
        train_src=train_src, eval_src=eval_src, shards=shards,
        resumed_from=start if restored is not None else None,
        timing={"total_s": meta["wall_s"],
                "this_process_s": time.time() - wall_start,
                "first_round_s": first_round_s,
                "data_s": loader.data_seconds,
                "data_wait_s": loader.wait_seconds},
        compiled_rounds=engine.compiled_rounds())
    if is_main:
      write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    writer.close()
  logging.info("done: %s eval loss %.4f after %d rounds, %s per replica "
               "sent, %s", config.outer.name,
               summary["final_eval"].get("loss", float("nan")),
               summary["rounds"], f"{summary['payload_bytes']:.3g} B",
               _fmt_time(summary["wall_s"]))
  return summary


def _summary(*, config, status, task, engine, meta, rounds_done, comm,
             tokens_per_round, last_train, train_src, eval_src, shards,
             resumed_from, timing, compiled_rounds) -> Dict[str, Any]:
  tc = config.train
  final_eval = dict(meta.get("last_eval") or {})
  final_eval.pop("round", None)
  corpus = dict(getattr(train_src, "info", {}) or {})
  return {
      "status": status,
      "algorithm": config.outer.name,
      "rounds": rounds_done,
      "rounds_planned": tc.rounds,
      "num_replicas": tc.num_replicas,
      "inner_steps": config.inner.steps,
      "batch_size": config.inner.batch_size,
      "steps": rounds_done * config.inner.steps,
      "tokens": rounds_done * tokens_per_round,
      "final_eval": final_eval,
      "final_eval_round": (meta.get("last_eval") or {}).get("round"),
      "best_eval_loss": meta.get("best_eval_loss"),
      "best_eval_round": meta.get("best_eval_round"),
      "final_train_loss": last_train.get("train/loss"),
      "payload_bytes": rounds_done * comm["payload_bytes"],
      "ring_bytes": rounds_done * comm["ring_bytes"],
      "payload_bytes_per_round": comm["payload_bytes"],
      "ring_bytes_per_round": comm["ring_bytes"],
      "nonfinite_replicas": meta.get("nonfinite_replicas", 0),
      "wall_s": meta["wall_s"],
      "timing": timing,
      "resumed_from": resumed_from,
      "resumes": meta.get("resumes", 0),
      "compiled_rounds": compiled_rounds,
      "num_params": task.num_params,
      "flops_per_example": task.flops_per_example,
      "data": {"train_examples": len(train_src), "eval_examples": len(eval_src),
               "shard_sizes": [int(len(s)) for s in shards],
               "heterogeneity": _safe_heterogeneity(train_src, shards)},
      "corpus": corpus.get("fingerprint", corpus),
      "config": config.to_dict(),
      "versions": versions(),
      "devices": {"platform": jax.default_backend(),
                  "count": jax.device_count(),
                  "kind": jax.devices()[0].device_kind,
                  "processes": jax.process_count(),
                  "mesh_devices": engine.num_shards if engine.mesh else 0},
  }


def _safe_heterogeneity(source, shards) -> Optional[float]:
  try:
    return data_lib.heterogeneity(source, shards)
  except ValueError:
    return None


# ----------------------------------------------------------------------------
# Comparisons: many arms of one config.


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides ('outer.hparams' replaces).

  Raises:
    ConfigError: an override names an unknown field or has the wrong type.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ConfigError(f"{key}: unknown field in a sweep override")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"{key}: unknown field in a sweep override")
    if isinstance(value, dict):
      value = ml_collections.ConfigDict(value)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{key}: {e}") from None
  return config


def run_comparison(base_config: ml_collections.ConfigDict,
                   arms: Sequence[Dict[str, Any]], workdir: str, *,
                   reuse: bool = True) -> List[Dict[str, Any]]:
  """Runs every arm (one engine each, in this process) and reports.

  Every arm shares the base config's data, model, inner optimizer and token
  budget; an arm only overrides fields (the algorithm, H, outer lr, seed;
  its `train.rounds` is set so rounds × H stays equal).

  Args:
    base_config: the shared config.
    arms: dicts with 'name' (a directory name) and 'overrides' (dotted keys).
    workdir: arms run in workdir/<name>; the table and plots go to workdir.
    reuse: an arm whose summary.json says it completed is not run again.

  Returns:
    One result dict per arm (its summary plus 'name' and 'overrides').
  """
  from fedjax_lab import plots  # pylint: disable=g-import-not-at-top
  configs = []
  names = [a["name"] for a in arms]
  if len(set(names)) != len(names):
    raise ConfigError(f"sweep: arm names must be unique, got {names}")
  for arm in arms:  # Validate every arm before running any.
    cfg = apply_overrides(base_config, arm.get("overrides", {}))
    try:
      config_validation.validate(cfg, device_count=jax.device_count())
    except ConfigError as e:
      raise ConfigError(f"sweep arm {arm['name']!r}: {e}") from None
    configs.append(cfg)
  results = []
  start = time.time()
  for i, (arm, cfg) in enumerate(zip(arms, configs)):
    arm_dir = os.path.join(workdir, arm["name"])
    summary_path = os.path.join(arm_dir, SUMMARY_FILE)
    summary = None
    if reuse and os.path.exists(summary_path):
      with open(summary_path) as f:
        old = json.load(f)
      if old.get("status") == "completed" and old.get("rounds") == cfg.train.rounds:
        summary = old
        logging.info("arm %s: reusing %s", arm["name"], summary_path)
    if summary is None:
      logging.info("arm %d/%d: %s (%s)", i + 1, len(arms), arm["name"],
                   arm.get("overrides"))
      try:
        summary = train_and_evaluate(cfg, arm_dir)
      except TrainingStopped as e:
        logging.error("arm %s stopped: %s", arm["name"], e)
        with open(summary_path) as f:
          summary = json.load(f)
    results.append({"name": arm["name"],
                    "overrides": arm.get("overrides", {}), **summary})
    elapsed = time.time() - start
    logging.info("comparison: %d/%d arms done, elapsed %s, ETA %s", i + 1,
                 len(arms), _fmt_time(elapsed),
                 _fmt_time(elapsed / (i + 1) * (len(arms) - i - 1)))
  if jax.process_index() == 0:
    plots.write_report(results, workdir)
  return results
