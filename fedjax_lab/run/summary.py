"""summary.json: what a run did, on what, with which versions."""

import platform
from typing import Any, Dict, Optional

import jax
import numpy as np
import optax

from fedjax_lab import data as data_lib
from fedjax_lab.run import async_rounds


def versions() -> Dict[str, str]:
  """Versions of everything a result depends on."""
  import flax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  import fedjax_lab  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", jax.__version__),
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax_checkpoint": ocp.__version__, "numpy": np.__version__,
          "fedjax_lab": fedjax_lab.__version__}


def _heterogeneity(source, shards) -> Optional[float]:
  try:
    return data_lib.heterogeneity(source, shards)
  except ValueError:
    return None


def _population(run) -> Optional[Dict[str, Any]]:
  """What a population run sampled from (None without one)."""
  pop = run.population
  if pop is None:
    return None
  tc = run.parts.train
  sizes = np.array([len(s) for s in run.shards])
  return {"num_clients": tc.num_clients,
          "clients_per_round": tc.num_replicas,
          "sampling": tc.sampling,
          "local_epochs": tc.local_epochs,
          "max_local_steps": tc.max_local_steps,
          "step_axis": run.inner_steps,
          "client_examples": {"min": int(sizes.min()),
                              "median": float(np.median(sizes)),
                              "max": int(sizes.max())},
          "client_state_bytes": (None if pop.store is None
                                 else pop.store.nbytes)}


def make_summary(run, *, status: str, meta: Dict[str, Any], rounds_done: int,
                 last_train: Dict[str, Any], resumed_from: Optional[int],
                 timing: Dict[str, Any]) -> Dict[str, Any]:
  """The summary dict of `run` (a `build.Run`) after `rounds_done` rounds."""
  config, parts, comm = run.config, run.parts, run.comm
  final = meta.get("final") or {}
  # A completed run: the final protocol (whole splits); otherwise the last
  # periodic evaluation (a sample), as `eval_protocol` says.
  final_eval = dict(final.get("eval") or meta.get("last_eval") or {})
  final_test = dict(final.get("test") or meta.get("last_test") or {})
  final_eval.pop("round", None)
  final_test.pop("round", None)
  corpus = dict(getattr(run.train_src, "info", {}) or {})
  engine = run.engine
  h = run.inner_steps
  tokens = rounds_done * run.tokens_per_round
  if run.counts_own_tokens:
    tokens = meta.get("tokens", 0)
  # Steps a sync policy skipped (DyLU, a deadline's shorter replicas).
  tokens -= meta.get("skipped_steps", 0) * (
      run.tokens_per_round // (parts.train.num_replicas * h))
  out = {
      "status": status,
      "algorithm": parts.outer.name,
      "rounds": rounds_done,
      "rounds_planned": parts.train.rounds,
      "num_replicas": parts.train.num_replicas,
      "inner_steps": h,
      "batch_size": parts.inner.batch_size,
      "steps": rounds_done * h,
      "schedule_steps": run.schedule_steps,
      "tokens": tokens,
      "final_eval": final_eval,
      "final_test": final_test,
      "final_eval_round": (final or meta.get("last_eval") or {}).get("round"),
      "eval_protocol": {
          "final": ((meta.get("eval_protocol") or {}).get("final") if final
                    else "none: the run did not complete; final_eval/test "
                    "are its last periodic evaluation"),
          "periodic": (meta.get("eval_protocol") or {}).get("periodic")},
      "best_eval_loss": meta.get("best_eval_loss"),
      "best_eval_round": meta.get("best_eval_round"),
      "final_train_loss": last_train.get("train/loss"),
      "payload_bytes": rounds_done * comm["payload_bytes"],
      "ring_bytes": rounds_done * comm["ring_bytes"],
      "payload_bytes_per_round": comm["payload_bytes"],
      "ring_bytes_per_round": comm["ring_bytes"],
      "nonfinite_replicas": meta.get("nonfinite_replicas", 0),
      "empty_rounds": meta.get("empty_rounds", 0),
      "wall_s": meta["wall_s"],
      # The simulated clock (fedjax_lab.clock): seconds on the profile's
      # devices and network, the profile, and what the algorithm sends.
      "sim_seconds": (meta.get("clock") or {}).get("seconds", 0.0),
      "clock": _clock(run),
      "syncs_every_step": engine.every_step,
      "collectives": sorted({msg.collective
                             for _, msg in engine.messages(run.params)}),
      "timing": timing,
      "resumed_from": resumed_from,
      "resumes": meta.get("resumes", 0),
      "compiled_rounds": engine.compiled_rounds(),
      "num_params": run.task.num_params,
      "flops_per_example": run.task.flops_per_example,
      "data": _data(run),
      "corpus": corpus.get("fingerprint", corpus),
      "config": config.to_dict(),
      "versions": versions(),
      "devices": _devices(engine),
  }
  if run.population is not None:
    out["population"] = _population(run)
  return out


def _data(run) -> Dict[str, Any]:
  """The run's splits and shards: sizes, split names, heterogeneity."""
  return {"train_examples": len(run.train_src),
          "eval_examples": len(run.eval_src),
          "eval_split": run.eval_src.info.get("split"),
          "test_examples": (None if run.test_src is None
                            else len(run.test_src)),
          "test_split": (None if run.test_src is None
                         else run.test_src.info.get("split")),
          "shard_sizes": [int(len(s)) for s in run.shards],
          "heterogeneity": _heterogeneity(run.train_src, run.shards)}


def _devices(engine) -> Dict[str, Any]:
  """The devices the run ran on."""
  return {"platform": jax.default_backend(),
          "count": jax.device_count(),
          "kind": jax.devices()[0].device_kind,
          "processes": jax.process_count(),
          "mesh_devices": engine.num_shards if engine.mesh else 0}


def _clock(run) -> Optional[Dict[str, Any]]:
  """The clock's profile (and the async simulation's settings)."""
  if run.clock is None:
    return None
  out = run.clock.describe()
  if getattr(run, "async_sim", None) is not None:
    out.update(async_rounds.describe(run.async_sim, run.parts))
  return out
