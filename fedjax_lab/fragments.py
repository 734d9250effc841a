"""Which parameters sync when: Streaming DiLoCo's fragment schedule, as data.

"Streaming DiLoCo with overlapping communication: Towards a Distributed Free
Lunch", Douillard et al., arXiv 2501.18512 (docs/algorithms.md, Communication).

The parameters are split into P fragments (strided over transformer layers by
default). Fragment p synchronises every H steps at its own offset: after inner
step (p + 1)·H/P of every round, with its own outer optimizer and compressor
state. The result may overlap τ inner steps: replicas keep training and only τ
steps later merge θ_{i,p} ← α·θ_{i,p} + (1 − α)·θ_p (α = 0 takes the new global
value). P = 1, τ = 0, α = 0 is plain DiLoCo (and every other rule whose replicas
restart from the global model): the engine runs one loop for both.

This module sits below the engine and imports nothing from it.
"""

import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

# A segment of a round: inner steps [start, stop), then the events after step
# `stop`, each ("sync" | "merge", fragment).
Segment = Tuple[int, int, Tuple[Tuple[str, int], ...]]


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


class FragmentSchedule(NamedTuple):
  """When each part of the model syncs (Streaming DiLoCo).

  Attributes:
    num_fragments: P ≥ 1; the round's inner steps H must be a multiple of P.
    overlap_steps: τ in [0, H): inner steps the outer result is applied late.
    merge_alpha: α in [0, 1] of the merge θ_i ← α·θ_i + (1 − α)·θ.
    fragment_fn: (params, P) -> the fragment of every leaf in
      `jax.tree.leaves` order (None: `strided_fragments`).
  """
  num_fragments: int = 1
  overlap_steps: int = 0
  merge_alpha: float = 0.0
  fragment_fn: Optional[Callable[[object, int], Sequence[int]]] = None

  @property
  def is_plain(self) -> bool:
    """One fragment synced at the round's end and taken as is: no streaming."""
    return (self.num_fragments == 1 and self.overlap_steps == 0 and
            self.merge_alpha == 0.0)

  def validate(self, inner_steps: int) -> "FragmentSchedule":
    """Raises a ValueError naming the field for a schedule H cannot run."""
    p, tau, a = self.num_fragments, self.overlap_steps, self.merge_alpha
    if (not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 1 or
        inner_steps % p):
      raise ValueError(f"num_fragments must be an integer >= 1 dividing "
                       f"inner_steps={inner_steps}, got {p!r}")
    if (not isinstance(tau, (int, np.integer)) or isinstance(tau, bool) or
        not 0 <= tau < inner_steps):
      raise ValueError(f"overlap_steps must be an integer in [0, "
                       f"inner_steps={inner_steps}), got {tau!r}")
    if (not isinstance(a, (int, float)) or isinstance(a, bool) or
        not 0.0 <= a <= 1.0):
      raise ValueError(f"merge_alpha must be in [0, 1], got {a!r}")
    return self._replace(num_fragments=int(p), overlap_steps=int(tau),
                         merge_alpha=float(a))

  def assign(self, params) -> List[List[int]]:
    """Leaf indices of each fragment (a partition of the leaves)."""
    fn = self.fragment_fn or strided_fragments
    assignment = list(fn(params, self.num_fragments))
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

  def segments(self, inner_steps: int) -> List[Segment]:
    """The round cut at its events, in time order (static).

    Fragment p syncs after step (p + 1)·H/P. With τ > 0 it merges τ steps
    later; a merge that falls past the round's end happens τ − (H − t_sync)
    steps into the next round (the engine skips merges in round 0, before
    any sync has happened).
    """
    h, s, tau = inner_steps, inner_steps // self.num_fragments, \
        self.overlap_steps
    events: Dict[int, List[Tuple[str, int]]] = {}
    for p in range(self.num_fragments):
      t_sync = (p + 1) * s
      events.setdefault(t_sync, []).append(("sync", p))
      if tau:
        t_merge = t_sync + tau
        wrapped = t_merge > h
        events.setdefault(t_merge - h if wrapped else t_merge, []).append(
            ("merge_next" if wrapped else "merge", p))
    out, t0 = [], 0
    for t1 in sorted(set(events) | {h}):
      out.append((t0, t1, tuple(events.get(t1, ()))))
      t0 = t1
    return out


def take(tree, idx: Optional[Sequence[int]]):
  """The leaves `idx` of a tree as a tuple (the whole tree when idx is None)."""
  if idx is None:
    return tree
  leaves = jax.tree.leaves(tree)
  return tuple(leaves[i] for i in idx)


def put(tree, idx: Optional[Sequence[int]], values):
  """`tree` with the leaves `idx` replaced by `values` (from `take`)."""
  if idx is None:
    return values
  leaves, treedef = jax.tree.flatten(tree)
  leaves = list(leaves)
  for i, v in zip(idx, values):
    leaves[i] = v
  return jax.tree.unflatten(treedef, leaves)
