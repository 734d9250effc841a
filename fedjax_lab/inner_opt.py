"""The inner optimizer every replica runs (AdamW, SGD or MuLoCo's Muon) on an optax schedule."""

import jax
import ml_collections
import optax

from fedjax_lab import muon as muon_lib


def make_schedule(inner: ml_collections.ConfigDict,
                  total_steps: int) -> optax.Schedule:
  """Linear warm-up to the peak lr, then cosine/linear decay (or constant).

  lr(t) = peak · (t + 1) / warmup for t < warmup (never exactly 0, so no step
  is wasted); afterwards peak · f(progress), f decaying from 1 at t = warmup
  to `final_lr_fraction` at t = total_steps, and constant after that.

  Args:
    inner: the `config.inner` group.
    total_steps: the step at which the decay ends (the schedule's horizon).
  """
  peak = float(inner.learning_rate)
  warmup = min(int(inner.warmup_steps), total_steps)
  final = float(inner.final_lr_fraction)
  span = max(total_steps - warmup, 1)
  if inner.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps=span, alpha=final)
  elif inner.decay == "linear":
    decay = optax.linear_schedule(peak, peak * final, transition_steps=span)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  warm = optax.linear_schedule(peak / warmup, peak,
                               transition_steps=max(warmup - 1, 1))
  return optax.join_schedules([warm, decay], boundaries=[warmup])


def _matrices(params):
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_inner_opt(inner: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """The inner optimizer on the schedule, with global-norm clipping.

  'adamw' (DiLoCo's inner optimizer): AdamW(b1, b2, eps, weight_decay).
  'sgd': SGD with optional heavy-ball `momentum`, weight decay added to the
  gradient (so scaled by the lr, as AdamW's). Weight decay applies to
  matrices only (ndim ≥ 2), not to LayerNorm scales and biases, as is usual
  for transformers.
  'muon' (MuLoCo's, fedjax_lab.muon): Muon with momentum `momentum` on the
  kernels, AdamW (b1, b2, eps) on vectors, embeddings and the head; both on
  the one schedule and `weight_decay`, which (as in MuLoCo) decays every
  parameter.
  """
  lr = make_schedule(inner, total_steps)
  if inner.optimizer == "sgd":
    parts = [optax.sgd(lr, momentum=inner.momentum or None)]
    if inner.weight_decay:
      parts.insert(0, optax.add_decayed_weights(inner.weight_decay,
                                                mask=_matrices))
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
  elif inner.optimizer == "muon":
    tx = muon_lib.muon(lr, momentum=inner.momentum,
                       weight_decay=inner.weight_decay, eps=inner.eps,
                       adam_b1=inner.b1, adam_b2=inner.b2)
  else:
    tx = optax.adamw(lr, b1=inner.b1, b2=inner.b2, eps=inner.eps,
                     weight_decay=inner.weight_decay, mask=_matrices)
  if inner.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(inner.grad_clip), tx)
  return tx
