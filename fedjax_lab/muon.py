r"""Muon as MuLoCo runs it: the inner optimizer of DiLoCo with Muon inside.

"MuLoCo: Muon is a practical inner optimizer for DiLoCo", Thérien, Huang,
Defazio, Rish, Belilovsky, arXiv 2505.23725. The outer step is DiLoCo's
(Nesterov SGD on the averaged Δ); only the replicas' inner optimizer changes.

The rule, per weight matrix W (fan_in inputs, fan_out outputs), step size η,
momentum μ, weight decay λ:

  M ← μ·M + G;   Z = NS₅(bfloat16(M) / (‖M‖_F + ε))
  W ← W·(1 − η·λ) − η·√(fan_out / fan_in)·Z

NS₅ is five quintic Newton–Schulz steps A = ZZᵀ, Z ← a·Z + (b·A + c·A²)·Z,
each with its own (a, b, c) (`NS_COEFFS`), on the orientation with no more
rows than columns. Matrices go to Muon; vectors, embeddings and the output
head go to AdamW with the same η and λ (bias-corrected, β = (0.9, 0.99),
ε = 1e-8).

Layout. Flax kernels are [fan_in, fan_out] (x @ W), the transpose of torch's
Linear weight [fan_out, fan_in]. Newton–Schulz commutes with transposition
(NS(Uᵀ) = NS(U)ᵀ, and we always iterate on the wide orientation), so only the
scale needs care: here fan_in is the product of a kernel's input axes and
fan_out that of its output axes — by default all axes but the last, and the
last (see `default_dimension_numbers`).

Why not `optax.contrib.muon` (optax 0.2.8)? Its pieces get close but cannot
express this rule exactly:
  * momentum: `scale_by_muon` keeps a bias-corrected EMA (1 − μ)·ΣμᵏG / (1 −
    μᵗ) instead of the plain sum ΣμᵏG. The direction is the same (the
    Frobenius normalisation removes the scalar, up to ε), but the state is not
    MuLoCo's M, and under a bfloat16 cast the scalar changes the rounding.
  * precision: optax runs Newton–Schulz in the momentum's dtype and casts the
    coefficients to it; MuLoCo casts U to bfloat16 and applies the
    coefficients unrounded. The cast cannot be put between optax's momentum
    and its orthogonalisation: both live in one transformation.
  * scale: optax multiplies by √max(1, fan_out/fan_in); MuLoCo has no max
    (a kernel with more inputs than outputs gets a smaller step).
  * defaults and routing: nesterov=True, one (3.4445, −4.7750, 2.0315) triple
    for all steps ('dion' gives the per-step ones), AdamW b2 0.999 with no
    weight decay and Nesterov tied to Muon's, and embeddings / head routed to
    Muon unless masked out.
So `scale_by_muloco_muon` below is a small transformation of its own; the
Newton–Schulz constants are the ones optax calls 'dion', and dimension specs
reuse `optax.contrib.MuonDimensionNumbers`.
"""

import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

# Newton–Schulz (a, b, c), one triple per iteration (MuLoCo's, = optax 'dion').
NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

# A leaf whose path contains one of these (case-insensitive) is an embedding
# or an output head: AdamW, whatever its shape. The byte LM's tied embedding
# ('embed') is both its input embedding and its output projection.
ADAMW_NAMES = ("embed", "head", "lm_head")

DimensionNumbersFn = Callable[[str, jax.Array], MuonDimensionNumbers]


def _path_name(path) -> str:
  return jax.tree_util.keystr(path).lower()


def is_embedding_or_head(path_name: str) -> bool:
  """Whether a (lower-cased) parameter path names an embedding or a head."""
  return any(name in path_name for name in ADAMW_NAMES)


def default_adam_mask(params) -> Any:
  """True (AdamW) for leaves of ndim < 2 and for embeddings / heads."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.ndim < 2 or is_embedding_or_head(_path_name(path)),
      params)


def default_dimension_numbers(path_name: str,
                              x: jax.Array) -> MuonDimensionNumbers:
  """Which axes of a kernel are its inputs and outputs (the rest: a batch).

  Default: a flax kernel [*inputs, out] is the matrix [prod(inputs), out]
  (Dense [in, out]; DenseGeneral attn_out [N, H, d]; Conv [kh, kw, cin, cout]).
  The LM's fused QKV kernel [d, 3, N, H] (name 'qkv') is three [d, N·H]
  matrices, one each for q, k and v, as torch models' separate wq/wk/wv:
  flattening it to [3·d·N, H] would orthogonalise the wrong matrix and scale
  it by √(H / 3dN).
  """
  if x.ndim == 4 and re.search(r"\bqkv\b", path_name):
    return MuonDimensionNumbers(reduction_axis=0, output_axis=(2, 3))
  return MuonDimensionNumbers(reduction_axis=tuple(range(x.ndim - 1)),
                              output_axis=x.ndim - 1)


def _axes(spec, ndim) -> Tuple[int, ...]:
  spec = (spec,) if isinstance(spec, int) else tuple(spec)
  return tuple(a % ndim for a in spec)


def newton_schulz(u: jax.Array, *, eps: float = 1e-8,
                  dtype: Any = jnp.bfloat16,
                  coeffs: Sequence[Tuple[float, float, float]] = NS_COEFFS
                  ) -> jax.Array:
  """MuLoCo's Newton–Schulz orthogonalisation of one matrix, returned in f32.

  Z = U (or Uᵀ, so that rows ≤ cols), cast to `dtype`, divided by ‖Z‖_F + ε,
  then per (a, b, c): A = ZZᵀ, B = bA + cA², Z ← aZ + BZ. Matrix products
  take `dtype` operands and accumulate in float32 (as bfloat16 GEMMs on
  accelerators do); A, B and Z are stored in `dtype`, as a torch bfloat16
  run stores them; coefficients are applied in float32 (unrounded). With
  dtype=float32 every cast is the identity and products run at full float32
  precision (no TF32 / bf16 passes).
  """
  f32 = jnp.float32
  store = lambda t: t.astype(dtype)

  def mm(p, q):
    return jnp.matmul(p, q, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=f32)

  z = store(u)
  transposed = z.shape[0] > z.shape[1]
  if transposed:
    z = z.T
  zf = z.astype(f32)
  z = store(zf / (jnp.sqrt(jnp.sum(zf * zf)) + eps))
  for a, b, c in coeffs:
    a_ = store(mm(z, z.T))
    b_ = store(b * a_.astype(f32) + c * mm(a_, a_))
    z = store(a * z.astype(f32) + mm(b_, z))
  z = z.astype(f32)
  return z.T if transposed else z


def orthogonalize(m: jax.Array, dims: MuonDimensionNumbers, *,
                  eps: float = 1e-8, dtype: Any = jnp.bfloat16) -> jax.Array:
  """√(fan_out/fan_in)·NS(M) for a kernel whose axes `dims` names.

  Axes in neither `dims.reduction_axis` (inputs) nor `dims.output_axis` are
  batch axes: each slice is its own matrix. fan_in / fan_out are the products
  of the input / output axes (flax layout: no transpose from torch's needed
  beyond reading the axes this way round).
  """
  red = _axes(dims.reduction_axis, m.ndim)
  out = _axes(dims.output_axis, m.ndim)
  if set(red) & set(out) or not red or not out:
    raise ValueError(f"bad Muon dimension numbers {dims} for shape {m.shape}")
  batch = tuple(a for a in range(m.ndim) if a not in red + out)
  perm = batch + red + out
  fan_in = math.prod(m.shape[a] for a in red)
  fan_out = math.prod(m.shape[a] for a in out)
  nb = math.prod(m.shape[a] for a in batch)
  x = jnp.transpose(m, perm).reshape(nb, fan_in, fan_out)
  z = jax.vmap(lambda s: newton_schulz(s, eps=eps, dtype=dtype))(x)
  z = z.reshape(tuple(m.shape[a] for a in perm))
  z = jnp.transpose(z, tuple(perm.index(a) for a in range(m.ndim)))
  # MuLoCo's √(fan_out / fan_in), no max(1, ·): in torch's [fan_out, fan_in]
  # that is √(shape[0]/shape[1]); in flax's [fan_in, fan_out], √(out/in).
  return (math.sqrt(fan_out / fan_in) * z).astype(m.dtype)


class MuLoCoMuonState(NamedTuple):
  """Muon's state: the momentum M (the params' tree and dtype)."""
  momentum: optax.Updates


def scale_by_muloco_muon(
    momentum: float = 0.9, *, eps: float = 1e-8, ns_dtype: Any = jnp.bfloat16,
    dimension_numbers: Optional[DimensionNumbersFn] = None
) -> optax.GradientTransformation:
  """G → √(fan_out/fan_in)·NS₅(μM + G): MuLoCo's Muon direction, no lr/decay.

  Every leaf it sees must be a kernel (ndim ≥ 2); route others elsewhere
  (`muon` does). `dimension_numbers(path_name, leaf)` says which axes are
  inputs and outputs (default `default_dimension_numbers`).
  """
  dims_fn = dimension_numbers or default_dimension_numbers

  def init_fn(params):
    return MuLoCoMuonState(momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    new_m = jax.tree.map(lambda m, g: momentum * m + g.astype(m.dtype),
                         state.momentum, updates)
    out = jax.tree_util.tree_map_with_path(
        lambda path, m: orthogonalize(m, dims_fn(_path_name(path), m),
                                      eps=eps, dtype=ns_dtype),
        new_m)
    return out, MuLoCoMuonState(momentum=new_m)

  return optax.GradientTransformation(init_fn, update_fn)


def muon(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9,
         weight_decay: float = 0.00125, eps: float = 1e-8,
         adam_b1: float = 0.9, adam_b2: float = 0.99,
         ns_dtype: Any = jnp.bfloat16,
         adam_mask_fn: Optional[Callable[[Any], Any]] = None,
         dimension_numbers: Optional[DimensionNumbersFn] = None
         ) -> optax.GradientTransformation:
  """MuLoCo's inner optimizer: Muon on kernels, AdamW on everything else.

  Defaults are the paper's (η 0.044 is its learning rate; pass it, or a
  schedule peaking there). Both halves share `learning_rate` and
  `weight_decay`; the AdamW half decays every leaf it gets (vectors too), as
  MuLoCo does. `eps` is both the Newton–Schulz normaliser's and Adam's.

  Args:
    learning_rate: η, a float or an optax schedule.
    momentum: μ of Muon's M ← μM + G (no dampening, no Nesterov).
    weight_decay: λ, decoupled: W ← W(1 − ηλ) − η·update.
    eps: ε in Z/(‖Z‖_F + ε) and in Adam's m̂/(√v̂ + ε).
    adam_b1, adam_b2: Adam's β1, β2 (bias-corrected).
    ns_dtype: dtype of the Newton–Schulz iteration (bfloat16 as MuLoCo;
      float32 for tests).
    adam_mask_fn: params → bool tree, True where AdamW applies. Default
      `default_adam_mask`: ndim < 2, or a path containing 'embed', 'head' or
      'lm_head' (case-insensitive).
    dimension_numbers: (lower-cased path, kernel) → MuonDimensionNumbers;
      default `default_dimension_numbers`.
  """
  mask_fn = adam_mask_fn or default_adam_mask

  def labels(params):
    return jax.tree.map(lambda adam: "adamw" if adam else "muon",
                        mask_fn(params))

  return optax.partition(
      {
          "muon": optax.chain(
              scale_by_muloco_muon(momentum, eps=eps, ns_dtype=ns_dtype,
                                   dimension_numbers=dimension_numbers),
              optax.add_decayed_weights(weight_decay),
              optax.scale_by_learning_rate(learning_rate)),
          "adamw": optax.adamw(learning_rate, b1=adam_b1, b2=adam_b2, eps=eps,
                               weight_decay=weight_decay),
      },
      labels)
