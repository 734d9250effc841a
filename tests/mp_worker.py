"""A multi-process worker for tests/test_multiprocess.py (library level).

Runs a few rounds of a small problem on a replica mesh over every device of
every process, each process feeding only its own replicas' batches, and
writes (from process 0) the global params after every round. Optionally saves
or restores an orbax checkpoint, or stalls so that a peer can be killed.

  python tests/mp_worker.py --algo=diloco --rounds=3 --out=DIR
  python tests/mp_worker.py --algos=diloco,fedavg,... --rounds=3 --out=DIR

With --algos, one process (pair) runs every listed registry entry in turn,
each from the same initial params and batches, and writes DIR/<name>/round<r>.npz
(with --algo: DIR/round<r>.npz).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedjax_lab import distributed  # noqa: E402  (before any device use)

M, H, B, D = 8, 3, 4, 6
# SCAFFOLD needs plain constant-lr SGD inner steps with local_lr = that lr.
SGD_LR = 0.05


def main():
  # Over 80 lines on purpose: the worker's flags and its one scripted run, in order.
  parser = argparse.ArgumentParser()
  parser.add_argument("--algo", default="diloco")
  parser.add_argument("--algos", default="",
                      help="comma-separated registry names, run in turn")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", required=True)
  parser.add_argument("--save", default="", help="orbax dir to save into")
  parser.add_argument("--restore", default="", help="orbax dir to restore")
  parser.add_argument("--model_devices", type=int, default=1,
                      help="devices each replica is sharded over (2-D mesh)")
  parser.add_argument("--stall_after", type=int, default=-1,
                      help="after this round, keep running rounds slowly")
  parser.add_argument("--heartbeat_timeout_seconds", type=int, default=None,
                      help="a peer silent this long is declared lost")
  args = parser.parse_args()
  distributed.initialize(distributed.config_from_env(
      heartbeat_timeout_seconds=args.heartbeat_timeout_seconds))

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import numpy as np
  import optax
  import orbax.checkpoint as ocp

  import fedjax_lab

  def loss_fn(params, batch, rng):
    del rng
    h = jnp.tanh(batch["x"] @ params["w1"])
    return jnp.mean(jnp.square(h @ params["w2"] - batch["y"]))

  def fetch(x):  # Replicated or sharded: the full value on every process.
    return np.asarray(jax.experimental.multihost_utils.process_allgather(
        x, tiled=True))

  mesh = fedjax_lab.replica_mesh(model_devices=args.model_devices)
  mine = distributed.local_replica_ids(mesh, M)

  def run_one(name, out):
    """Runs `name` for args.rounds rounds, writing out/round<r>.npz."""
    if name == "scaffold":
      algo = fedjax_lab.outer.get(name, local_lr=SGD_LR)
      inner_opt = optax.sgd(SGD_LR)
    else:
      algo, inner_opt = fedjax_lab.outer.get(name), optax.adam(1e-2)
    engine = fedjax_lab.Engine(loss_fn, inner_opt=inner_opt, outer=algo,
                               num_replicas=M, inner_steps=H, mesh=mesh,
                               min_shard_size=1)
    params = {"w1": jnp.asarray(np.random.RandomState(0).randn(D, 8) * 0.5,
                                jnp.float32),
              "w2": jnp.asarray(np.random.RandomState(1).randn(8) * 0.5,
                                jnp.float32)}
    if args.restore:
      with ocp.CheckpointManager(os.path.abspath(args.restore)) as mngr:
        state = mngr.restore(mngr.latest_step(),
                             args=ocp.args.StandardRestore(
                                 engine.abstract_state(params)))
    else:
      state = engine.init(params, seed=0)

    os.makedirs(out, exist_ok=True)
    if args.restore:
      # process_allgather is a collective: every process takes part.
      values = {k: fetch(v) for k, v in state.params.items()}
      values.update({"rep_" + k: fetch(v)
                     for k, v in state.replica_params.items()})
      if jax.process_index() == 0:  # Process 0 writes.
        np.savez(os.path.join(out, "restored.npz"), **values)
    r = 0
    while r < args.rounds or args.stall_after >= 0:
      rs = np.random.RandomState(100 + r)  # The same global batch everywhere.
      x = rs.randn(M, H, B, D).astype(np.float32)
      y = np.sin(x.sum(-1)).astype(np.float32)
      batch = {"x": x[mine], "y": y[mine]}  # This process's replicas only.
      state, metrics = engine.round(state, batch)
      loss = float(metrics["loss"])
      values = {k: fetch(v) for k, v in state.params.items()}
      if jax.process_index() == 0:  # Process 0 writes.
        np.savez(os.path.join(out, f"round{r}.npz"), **values)
        print(f"{name} round {r} loss {loss:.6f}", flush=True)
      r += 1
      if 0 <= args.stall_after < r:
        time.sleep(0.5)
    if args.save:
      with ocp.CheckpointManager(os.path.abspath(args.save)) as mngr:
        mngr.save(r, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()

  if args.algos:
    for name in args.algos.split(","):
      run_one(name, os.path.join(args.out, name))
  else:
    run_one(args.algo, args.out)
  print(f"process {jax.process_index()} done", flush=True)


if __name__ == "__main__":
  main()
