"""Models: shapes, causality, hand-counted sizes and FLOPs, a tiny overfit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_lab import models

TINY_LM = dict(d_model=16, num_layers=2, num_heads=2, mlp_ratio=4, seq_len=12)


def _tokens(batch=3, length=TINY_LM["seq_len"] + 1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)),
                     jnp.int32)


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_lm_shapes_dtypes_and_metrics():
  task = models.lm_task(**TINY_LM)
  params = jax.jit(task.init)(jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  loss, metrics = jax.jit(task.loss_fn)(params, {"tokens": _tokens()}, None)
  assert loss.shape == ()
  assert set(metrics) == {"loss", "accuracy", "perplexity", "bits_per_byte"}
  # At init the model is near uniform over 256 bytes.
  assert abs(float(loss) - math.log(256)) < 0.1
  assert float(metrics["perplexity"]) == pytest.approx(math.exp(float(loss)),
                                                       rel=1e-5)
  assert float(metrics["bits_per_byte"]) == pytest.approx(
      float(loss) / math.log(2), rel=1e-6)
  assert task.kind == "lm"


def test_lm_param_count_by_hand():
  d, layers, ratio, vocab = 16, 2, 4, 256
  per_layer = (2 * d          # LayerNorm before attention
               + d * 3 * d    # fused QKV, no bias
               + d * d        # attention output
               + 2 * d        # LayerNorm before MLP
               + d * ratio * d + ratio * d * d)  # MLP, no bias
  expected = vocab * d + layers * per_layer + 2 * d  # Tied embedding, final LN.
  task = models.lm_task(**TINY_LM)
  assert task.num_params == expected == 10_400
  assert _count(jax.eval_shape(task.init, jax.random.key(0))) == expected
  # RoPE: no position parameters, so seq_len does not change the count.
  assert models.lm_task(**{**TINY_LM, "seq_len": 64}).num_params == expected


def test_lm_flops_formula():
  task = models.lm_task(**TINY_LM)
  n, layers, length, d = task.num_params, 2, 12, 16
  assert task.flops_per_example == (6 * n + 12 * layers * length * d) * length
  # Within 15% of XLA's own count of a forward pass (which adds softmax,
  # LayerNorm and the other elementwise work the formula leaves out).
  params = jax.jit(task.init)(jax.random.key(0))
  batch = {"tokens": _tokens(batch=4)}
  cost = jax.jit(lambda p: task.loss_fn(p, batch, None)[0]).lower(
      params).compile().cost_analysis()
  xla_forward_per_example = cost["flops"] / 4
  assert task.flops_per_example / 3 == pytest.approx(xla_forward_per_example,
                                                     rel=0.15)


def test_lm_is_causal():
  model = models.TransformerLM(d_model=16, num_layers=2, num_heads=2)
  tokens = _tokens(batch=2, length=10)
  params = model.init(jax.random.key(1), tokens)["params"]
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (2, 10, 256) and logits.dtype == jnp.float32
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 256)
  changed_logits = model.apply({"params": params}, changed)
  np.testing.assert_allclose(logits[:, :6], changed_logits[:, :6], atol=1e-6)
  assert not np.allclose(logits[:, 6:], changed_logits[:, 6:], atol=1e-4)


def test_lm_bfloat16_compute_and_dropout():
  task = models.lm_task(**TINY_LM, dtype="bfloat16", dropout=0.5)
  params = jax.jit(task.init)(jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  batch = {"tokens": _tokens()}
  loss_fn = jax.jit(task.loss_fn)
  a, _ = loss_fn(params, batch, jax.random.key(1))
  b, _ = loss_fn(params, batch, jax.random.key(2))
  c, _ = loss_fn(params, batch, None)  # Evaluation: dropout off.
  d, _ = loss_fn(params, batch, None)
  assert float(a) != float(b)
  assert float(c) == float(d)
  assert np.isfinite(float(a))


def _overfit(task, batch, steps=30, lr=1e-2):
  params = jax.jit(task.init)(jax.random.key(0))
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, batch, None)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return losses


def test_lm_overfits_a_tiny_batch():
  losses = _overfit(models.lm_task(**TINY_LM), {"tokens": _tokens(batch=2)})
  assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_classifier_overfits_and_shapes(model):
  task = models.classifier_task(model=model, num_classes=5, input_shape=(8, 8, 1),
                                hidden=(16, 16) if model == "mlp" else (4, 8, 16))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((10, 8, 8, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 5, 10), jnp.int32)}
  loss, metrics = jax.jit(task.loss_fn)(jax.jit(task.init)(jax.random.key(0)),
                                        batch, None)
  assert set(metrics) == {"loss", "accuracy"} and loss.shape == ()
  assert task.kind == "classification"
  losses = _overfit(task, batch)
  assert losses[-1] < 0.5 * losses[0]


def test_fedavg_paper_param_counts():
  # McMahan et al. (arXiv:1602.05629) report 199,210 (2NN) and 1,663,370 (CNN)
  # parameters for MNIST.
  mlp = models.classifier_task(model="mlp", num_classes=10, input_shape=(28, 28, 1))
  cnn = models.classifier_task(model="cnn", num_classes=10, input_shape=(28, 28, 1))
  assert mlp.num_params == 199_210
  assert cnn.num_params == 1_663_370
  assert _count(jax.eval_shape(cnn.init, jax.random.key(0))) == 1_663_370


def test_classifier_flops_by_hand():
  mlp = models.classifier_task(model="mlp", num_classes=10, input_shape=(28, 28, 1))
  assert mlp.flops_per_example == 6 * (784 * 200 + 200 * 200 + 200 * 10)
  cnn = models.classifier_task(model="cnn", num_classes=10, input_shape=(28, 28, 1))
  macs = (25 * 1 * 32 * 28 * 28      # conv1, SAME
          + 25 * 32 * 64 * 14 * 14   # conv2 after a 2×2 pool
          + 7 * 7 * 64 * 512 + 512 * 10)
  assert cnn.flops_per_example == 6 * macs


def test_classifier_rejects_bad_config():
  with pytest.raises(ValueError, match="unknown model"):
    models.classifier_task(model="resnet", num_classes=10, input_shape=(8, 8, 1))
  with pytest.raises(ValueError, match="input_shape"):
    models.classifier_task(model="mlp", num_classes=10, input_shape=(64,))
  with pytest.raises(ValueError, match="heads"):
    models.lm_task(d_model=10, num_heads=4)
