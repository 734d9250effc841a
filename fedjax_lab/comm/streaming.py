"""Streaming DiLoCo.

"Streaming DiLoCo with overlapping communication: Towards a Distributed Free
Lunch", Douillard et al., arXiv 2501.18512.

The parameters are split into P fragments (strided over transformer layers by
default). Fragment p synchronises every H steps at its own offset: after inner
step (p + 1)·H/P of every round, with its own outer optimizer (and compressor)
state: Δ_p = θ_p − Σ_i w_i θ_{i,p}; θ_p ← outer(θ_p, Δ_p). The result may
overlap τ inner steps: replicas keep training and only τ steps later merge
θ_{i,p} ← α·θ_{i,p} + (1 − α)·θ_p (α = 0 takes the new global value).
With P = 1, τ = 0, α = 0 this is exactly DiLoCo. Each sync sends 1/P of the
model, so peak bandwidth falls by P while total bytes stay the same.
"""

import re
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab import engine as engine_lib
from fedjax_lab.engine import TrainState, _all_finite, _select

# Outer rules whose replicas are pulled somewhere other than the global model;
# the streaming merge replaces that pull, so they are refused.
_UNSUPPORTED = ("ddp", "easgd", "papa", "papa_2")


def layer_index(path) -> Optional[int]:
  """The layer number in a param path ('blocks_3', 'layer_3', 'h3'), if any."""
  for entry in path:
    name = str(getattr(entry, "key", getattr(entry, "name", entry)))
    match = re.search(r"(\d+)$", name)
    if match and not name.isdigit():
      return int(match.group(1))
  return None


def strided_fragments(params, num_fragments: int) -> List[int]:
  """The fragment of every leaf (in `jax.tree.leaves` order).

  Layer l goes to fragment l mod P (strided, as in the paper); leaves outside
  the layers (embeddings, final norm) go, largest first, to the fragment that
  is smallest so far, which keeps fragments balanced.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  sizes = np.zeros(num_fragments)
  assignment: List[Optional[int]] = []
  for path, leaf in leaves:
    layer = layer_index(path)
    frag = None if layer is None else layer % num_fragments
    assignment.append(frag)
    if frag is not None:
      sizes[frag] += int(np.prod(leaf.shape))
  order = sorted((i for i, a in enumerate(assignment) if a is None),
                 key=lambda i: -int(np.prod(leaves[i][1].shape)))
  for i in order:
    frag = int(np.argmin(sizes))
    assignment[i] = frag
    sizes[frag] += int(np.prod(leaves[i][1].shape))
  return [int(a) for a in assignment]


class StreamingEngine(engine_lib.Engine):
  """An `Engine` whose outer step runs fragment by fragment (Streaming DiLoCo).

  Example:
    engine = StreamingEngine(loss_fn, inner_opt=optax.adamw(4e-4),
                             outer=fedjax_lab.outer.get("diloco"),
                             num_replicas=8, inner_steps=100,
                             num_fragments=4, overlap_steps=5)
  """

  def __init__(self, loss_fn, *, num_fragments: int, overlap_steps: int = 0,
               merge_alpha: float = 0.0,
               fragment_fn: Optional[Callable[[object, int], Sequence[int]]] = None,
               **engine_kwargs):
    """Builds the engine.

    Args:
      loss_fn: as `Engine`.
      num_fragments: P ≥ 1; inner_steps must be a multiple of P.
      overlap_steps: τ in [0, inner_steps): inner steps the outer result is
        applied late.
      merge_alpha: α in [0, 1] of the merge θ_i ← α·θ_i + (1 − α)·θ.
      fragment_fn: (params, P) -> the fragment of every leaf in
        `jax.tree.leaves` order (default `strided_fragments`).
      **engine_kwargs: everything `Engine` takes.
    """
    super().__init__(loss_fn, **engine_kwargs)
    h = self.inner_steps
    if self.outer.name in _UNSUPPORTED or self.outer.data_parallel:
      raise ValueError(
          f"outer: Streaming DiLoCo merges replicas toward the global model; "
          f"{self.outer.name!r} is not supported (use one of the rules that "
          f"restart replicas from it, e.g. 'diloco')")
    if (not isinstance(num_fragments, int) or num_fragments < 1 or
        h % num_fragments):
      raise ValueError(f"num_fragments must be an integer >= 1 dividing "
                       f"inner_steps={h}, got {num_fragments!r}")
    if not isinstance(overlap_steps, int) or not 0 <= overlap_steps < h:
      raise ValueError(f"overlap_steps must be an integer in [0, "
                       f"inner_steps={h}), got {overlap_steps!r}")
    if not 0.0 <= merge_alpha <= 1.0:
      raise ValueError(f"merge_alpha must be in [0, 1], got {merge_alpha!r}")
    self.num_fragments = num_fragments
    self.overlap_steps = overlap_steps
    self.merge_alpha = float(merge_alpha)
    self.fragment_fn = fragment_fn or strided_fragments

  # --------------------------------------------------------------------------

  def fragments(self, params) -> List[List[int]]:
    """Leaf indices of each fragment (a partition of the leaves)."""
    assignment = list(self.fragment_fn(params, self.num_fragments))
    n = len(jax.tree.leaves(params))
    if len(assignment) != n or any(
        not 0 <= a < self.num_fragments for a in assignment):
      raise ValueError(f"fragment_fn must give each of the {n} leaves a "
                       f"fragment in [0, {self.num_fragments})")
    frags = [[i for i, a in enumerate(assignment) if a == p]
             for p in range(self.num_fragments)]
    if any(not f for f in frags):
      raise ValueError(f"num_fragments={self.num_fragments}: some fragment has "
                       "no parameters; use fewer fragments")
    return frags

  @staticmethod
  def _take(tree, idx):
    leaves = jax.tree.leaves(tree)
    return tuple(leaves[i] for i in idx)

  @staticmethod
  def _put(tree, idx, values):
    leaves, treedef = jax.tree.flatten(tree)
    leaves = list(leaves)
    for i, v in zip(idx, values):
      leaves[i] = v
    return jax.tree.unflatten(treedef, leaves)

  def _init_fn(self, params, rng):
    state = super()._init_fn(params, rng)
    frags = self.fragments(params)
    outer_state = tuple(self.outer.init(self._take(state.params, f))
                        for f in frags)
    comm_state = tuple(
        jax.vmap(self.compressor.init)(self._take(state.replica_params, f))
        for f in frags)
    return state.replace(outer_state=outer_state, comm_state=comm_state)

  def _events(self):
    """{time: [(kind, fragment)]} for times in 1..H after which events happen."""
    h, s, tau = self.inner_steps, self.inner_steps // self.num_fragments, \
        self.overlap_steps
    events = {}
    for p in range(self.num_fragments):
      t_sync = (p + 1) * s
      events.setdefault(t_sync, []).append(("sync", p))
      if tau:
        t_merge = t_sync + tau
        t_merge = t_merge - h if t_merge > h else t_merge
        events.setdefault(t_merge, []).append(("merge", p))
    return events

  def _merge(self, local, global_):
    a = self.merge_alpha
    def merge(p, g):
      out = a * p + (1 - a) * g[None] if a else jnp.broadcast_to(g, p.shape)
      return out.astype(p.dtype)
    merged = jax.tree.map(merge, local, global_)
    # A replica that diverged takes the global value outright.
    fine = _all_finite(local)
    restart = jax.tree.map(lambda p, g: jnp.broadcast_to(g, p.shape), local,
                           global_)
    return _select(fine, merged, restart)

  def _round_local(self, state: TrainState, batch, mask, num_examples,
                   num_steps, ops):
    sync_key, replica_keys, comm_keys = self._round_keys(state, ops)
    frags = self.fragments(state.params)
    g, reps, inner = state.params, state.replica_params, state.inner_state
    outer_state, comm_state = list(state.outer_state), list(state.comm_state)
    loss_sum = count = None
    aux_sum = {}
    finite = jnp.ones_like(mask)
    delta_sq = jnp.zeros([], jnp.float32)
    events = self._events()
    t0 = 0
    for t1 in sorted(set(events) | {self.inner_steps}):
      chunk = jax.tree.map(lambda x: x[:, t0:t1], batch)
      reps, inner, l_sum, a_sum, c, fin = self._local_phase(
          reps, inner, chunk, num_steps, replica_keys, g, start=t0)
      loss_sum = l_sum if loss_sum is None else loss_sum + l_sum
      count = c if count is None else count + c
      aux_sum = {k: aux_sum.get(k, 0.0) + v for k, v in a_sum.items()}
      finite = finite & fin
      for kind, p in events.get(t1, []):
        idx = frags[p]
        g_p, reps_p = self._take(g, idx), self._take(reps, idx)
        if kind == "sync":
          ok = mask & finite & _all_finite(reps_p) & (num_steps > 0)
          keys_p = jax.vmap(lambda k, p=p: jax.random.fold_in(k, p))(comm_keys)
          new_g_p, restarted, outer_state[p], comm_state[p], delta, _ = (
              self._sync(self.outer, g_p, outer_state[p], reps_p,
                         comm_state[p], ok, num_examples, keys_p,
                         jax.random.fold_in(sync_key, p), ops))
          delta_sq = delta_sq + sum(jnp.sum(jnp.square(d)) for d in delta)
          g = self._put(g, idx, new_g_p)
          if not self.overlap_steps:
            # Replicas that did not count restart from the new global value.
            merged = _select(ok, self._merge(reps_p, new_g_p), restarted)
            reps = self._put(reps, idx, merged)
        else:  # A merge τ steps after this fragment's sync.
          reps = self._put(reps, idx, self._merge(reps_p, g_p))
      t0 = t1
    finite = finite & _all_finite(reps)
    ok = mask & finite & (num_steps > 0)
    metrics = self._round_metrics(ok, mask, finite, loss_sum, aux_sum, count,
                                  (), ops)
    metrics["outer_grad_norm"] = jnp.sqrt(delta_sq)
    # Replicas that diverged restart from the global model, everywhere.
    restart = jax.tree.map(lambda x, like: jnp.broadcast_to(x, like.shape),
                           g, reps)
    reps = _select(finite, reps, restart)
    inner = _select(finite, inner, state.inner_state)
    new_state = state.replace(params=g, outer_state=tuple(outer_state),
                              replica_params=reps, inner_state=inner,
                              comm_state=tuple(comm_state),
                              round=state.round + 1)
    return new_state, metrics

  def comm_bytes(self, params):
    """Per replica per round: total payload, ring traffic, and the peak
    payload of one fragment's sync (what sets the bandwidth needed)."""
    per_fragment = [self.compressor.payload_bytes(self._take(params, f))
                    for f in self.fragments(params)]
    m = self.num_replicas
    payload = float(sum(per_fragment))
    return {"payload_bytes": payload,
            "ring_bytes": payload * 2 * (m - 1) / m,
            "peak_payload_bytes": float(max(per_fragment))}
