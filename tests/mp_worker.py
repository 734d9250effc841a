"""A multi-process worker for tests/test_multiprocess.py (library level).

Runs a few rounds of a small problem on a replica mesh over every device of
every process, each process feeding only its own replicas' batches, and
writes (from process 0) the global params after every round. Optionally saves
or restores an orbax checkpoint, or stalls so that a peer can be killed.

  python tests/mp_worker.py --algo=diloco --rounds=3 --out=DIR
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedjax_lab import distributed  # noqa: E402  (before any device use)

M, H, B, D = 8, 3, 4, 6


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--algo", default="diloco")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", required=True)
  parser.add_argument("--save", default="", help="orbax dir to save into")
  parser.add_argument("--restore", default="", help="orbax dir to restore")
  parser.add_argument("--model_devices", type=int, default=1,
                      help="devices each replica is sharded over (2-D mesh)")
  parser.add_argument("--stall_after", type=int, default=-1,
                      help="after this round, keep running rounds slowly")
  args = parser.parse_args()
  distributed.initialize()

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

  mesh = fedjax_lab.replica_mesh(model_devices=args.model_devices)
  engine = fedjax_lab.Engine(loss_fn, inner_opt=optax.adam(1e-2),
                             outer=args.algo, num_replicas=M, inner_steps=H,
                             mesh=mesh, min_shard_size=1)
  mine = distributed.local_replica_ids(mesh, M)
  params = {"w1": jnp.asarray(np.random.RandomState(0).randn(D, 8) * 0.5,
                              jnp.float32),
            "w2": jnp.asarray(np.random.RandomState(1).randn(8) * 0.5,
                              jnp.float32)}
  if args.restore:
    with ocp.CheckpointManager(os.path.abspath(args.restore)) as mngr:
      state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(
          engine.abstract_state(params)))
  else:
    state = engine.init(params, seed=0)

  def fetch(x):  # Replicated or sharded: the full value on every process.
    return np.asarray(jax.experimental.multihost_utils.process_allgather(
        x, tiled=True))

  os.makedirs(args.out, exist_ok=True)
  if args.restore:
    # process_allgather is a collective: every process takes part.
    values = {k: fetch(v) for k, v in state.params.items()}
    values.update({"rep_" + k: fetch(v)
                   for k, v in state.replica_params.items()})
    if jax.process_index() == 0:  # Process 0 writes.
      np.savez(os.path.join(args.out, "restored.npz"), **values)
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
      np.savez(os.path.join(args.out, f"round{r}.npz"), **values)
      print(f"round {r} loss {loss:.6f}", flush=True)
    r += 1
    if 0 <= args.stall_after < r:
      time.sleep(0.5)
  if args.save:
    with ocp.CheckpointManager(os.path.abspath(args.save)) as mngr:
      mngr.save(r, args=ocp.args.StandardSave(state))
      mngr.wait_until_finished()
  print(f"process {jax.process_index()} done", flush=True)


if __name__ == "__main__":
  main()
