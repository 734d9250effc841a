"""The inner optimizer every replica runs (AdamW, SGD or MuLoCo's Muon) on an optax schedule."""

import dataclasses

import jax
import optax

from fedjax_lab import muon as muon_lib
from fedjax_lab import spec
from fedjax_lab.spec import field

OPTIMIZERS = ("adamw", "sgd", "muon")
DECAYS = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class InnerSpec:
  """`config.inner`: the inner optimizer every replica runs (DiLoCo's AdamW
  with linear warm-up and cosine decay by default, arXiv 2311.08105; b2 0.99
  and clipping at 1 follow the DiLoCo scaling-laws paper, 2503.09799)."""
  # 'adamw' (DiLoCo's), 'sgd' (plain/momentum SGD, e.g. for scaffold) or
  # 'muon' (MuLoCo's: Muon on matrices, AdamW on the rest; configs/muloco.py).
  optimizer: str = field("adamw", spec.one_of(OPTIMIZERS))
  # H: inner steps per round (ddp: steps per round, synced each).
  steps: int = field(25, spec.POSITIVE)
  batch_size: int = field(16, spec.POSITIVE)  # B: sequences per replica per inner step.
  learning_rate: float = field(3e-3, spec.in_range(0.0, lo_open=True))  # Peak inner lr.
  warmup_steps: int = field(50, spec.NONNEG)  # Linear warm-up steps (per replica).
  decay: str = field("cosine", spec.one_of(DECAYS))  # After warm-up.
  final_lr_fraction: float = field(0.1, spec.FRACTION)  # Final lr = this × peak (cosine/linear).
  # Steps the decay spans; 0 = train.rounds × inner.steps of the first run
  # (a resume keeps it).
  schedule_steps: int = field(0, spec.NONNEG)
  b1: float = field(0.9, spec.UNIT_OPEN)  # Adam β1.
  b2: float = field(0.99, spec.UNIT_OPEN)  # Adam β2 (DiLoCo scaling laws: 0.99).
  eps: float = field(1e-8, spec.in_range(0.0, lo_open=True))  # Adam ε.
  weight_decay: float = field(0.1, spec.NONNEG)  # Decoupled weight decay (DiLoCo: 0.1).
  grad_clip: float = field(1.0, spec.NONNEG)  # Global-norm gradient clipping; 0 = off.
  # 'sgd': heavy-ball momentum, 0 = plain SGD; 'muon': Muon's momentum μ
  # (MuLoCo: 0.9). Must be 0 for 'adamw'.
  momentum: float = field(0.0, spec.UNIT_OPEN)

  def __post_init__(self):
    if self.optimizer not in ("sgd", "muon") and self.momentum:
      raise spec.ConfigError(
          f"inner.momentum: only inner.optimizer='sgd' or 'muon' takes it, "
          f"got {spec.show(self.momentum)} with {self.optimizer!r}; set it "
          "to 0")


def make_schedule(inner: InnerSpec,
                  total_steps: int) -> optax.Schedule:
  """Linear warm-up to the peak lr, then cosine/linear decay (or constant).

  lr(t) = peak · (t + 1) / warmup for t < warmup (never exactly 0, so no step
  is wasted); afterwards peak · f(progress), f decaying from 1 at t = warmup
  to `final_lr_fraction` at t = total_steps, and constant after that.

  Args:
    inner: the inner optimizer's spec (or a `config.inner` group).
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


def make_inner_opt(inner: InnerSpec,
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
