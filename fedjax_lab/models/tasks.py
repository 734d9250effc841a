"""Tasks: a model with its pure init and loss functions, size and cost.

A `Task` is what the engine trains: `init(rng) -> params` and
`loss_fn(params, batch, rng) -> (loss, metrics)`, both pure and jit-able,
with params a plain pytree of float32 arrays (flax.linen's
`model.init(rng, x)['params']`).

`KINDS` is the task registry the runner reads (a `fedjax_lab.registry.Registry`
of `TaskKind` values, `config.model.kind` → how to load its data, check its
model fields, build its Task and size its activations): a new kind of task is
one entry here with its model fields (its `spec`, a frozen dataclass the
`model` config group is read into), not branches in the runner.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from fedjax_lab import spec
from fedjax_lab.models import classifiers
from fedjax_lab.models import transformer
from fedjax_lab.registry import Registry
from fedjax_lab.spec import field
from fedjax_lab.typing import Batch
from fedjax_lab.typing import Params
from fedjax_lab.typing import PRNGKey

_LN2 = math.log(2.0)


class Task(NamedTuple):
  """A model with its loss.

  Attributes:
    init: rng → params.
    loss_fn: (params, batch, rng) → (scalar loss, metrics dict). The rng is
      used only for dropout; pass None to evaluate (dropout off).
    num_params: number of parameters.
    flops_per_example: TRAINING FLOPs (forward + backward = 3× forward) per
      example; for an LM an example is one sequence of seq_len predicted
      tokens, so this is flops_per_token · seq_len.
    kind: 'lm' or 'classification'.
    derived: metrics computed from the means over a whole evaluation (an
      LM's perplexity is exp of the mean loss, not the mean of the batches'
      exps): means → {name: value}. None: nothing derived.
  """
  init: Callable[[PRNGKey], Params]
  loss_fn: Callable[[Params, Batch, Optional[PRNGKey]],
                    Tuple[jax.Array, Dict[str, jax.Array]]]
  num_params: int
  flops_per_example: float
  kind: str
  derived: Optional[Callable[[Dict[str, float]], Dict[str, float]]] = None


def _count(init: Callable[[PRNGKey], Params]) -> int:
  """Parameter count from shapes alone (no compute)."""
  shapes = jax.eval_shape(init, jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def _classification_metrics(logits, labels):
  """Mean softmax cross-entropy and accuracy (logits float32)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, accuracy


def _lm_derived(means: Dict[str, float]) -> Dict[str, float]:
  """Perplexity and bits per byte of a whole evaluation's mean loss."""
  return {"perplexity": math.exp(min(means["loss"], 700.0)),
          "bits_per_byte": means["loss"] / _LN2}


def lm_task(*, d_model: int = 128, num_layers: int = 2, num_heads: int = 4,
            mlp_ratio: int = 4, seq_len: int = 128, dtype: Any = "float32",
            dropout: float = 0.0, remat: bool = False) -> Task:
  """A byte-level decoder-only transformer LM (`transformer.TransformerLM`).

  Batches are {'tokens': int32 [B, seq_len + 1]}: inputs tokens[:, :-1],
  targets tokens[:, 1:]. Metrics: 'loss' (mean token cross-entropy, nats),
  'accuracy' (next-byte top-1), 'perplexity' (exp loss) and 'bits_per_byte'
  (loss / ln 2: one token is one byte).

  FLOPs: `transformer.transformer_train_flops_per_token` = 6·N +
  12·num_layers·seq_len·d_model per token; flops_per_example is that times
  seq_len (training, 3× forward).

  Args:
    d_model: width (divisible by num_heads; head_dim even for RoPE).
    num_layers: depth.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / d_model.
    seq_len: tokens per input sequence.
    dtype: compute dtype name or dtype ('float32', 'bfloat16'); params float32.
    dropout: dropout rate (embeddings and residual branches).
    remat: rematerialise each transformer block in the backward pass.

  Returns:
    A Task with kind 'lm'.
  """
  if d_model % num_heads or (d_model // num_heads) % 2:
    raise ValueError(f"lm_task: d_model={d_model} must split into num_heads="
                     f"{num_heads} heads of even size (RoPE)")
  model = transformer.TransformerLM(
      d_model=d_model, num_layers=num_layers, num_heads=num_heads,
      mlp_ratio=mlp_ratio, dropout=dropout, dtype=jnp.dtype(dtype),
      remat=remat)

  def init(rng: PRNGKey) -> Params:
    return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]

  def loss_fn(params: Params, batch: Batch, rng: Optional[PRNGKey] = None):
    tokens = batch["tokens"]
    train = dropout > 0 and rng is not None
    logits = model.apply({"params": params}, tokens[:, :-1],
                         deterministic=not train,
                         rngs={"dropout": rng} if train else None)
    loss, accuracy = _classification_metrics(logits, tokens[:, 1:])
    return loss, {"loss": loss, "accuracy": accuracy,
                  "perplexity": jnp.exp(loss), "bits_per_byte": loss / _LN2}

  num_params = _count(init)
  per_token = transformer.transformer_train_flops_per_token(
      num_params=num_params, num_layers=num_layers, seq_len=seq_len,
      d_model=d_model)
  return Task(init=init, loss_fn=loss_fn, num_params=num_params,
              flops_per_example=per_token * seq_len, kind="lm",
              derived=_lm_derived)


def classifier_task(*, model: str = "mlp", num_classes: int,
                    input_shape: Sequence[int],
                    hidden: Optional[Sequence[int]] = None,
                    dtype: Any = "float32") -> Task:
  """An image classifier: the FedAvg paper's MLP ('mlp') or CNN ('cnn').

  Batches are {'image': float32 [B, *input_shape] in [0, 1], 'label': int32
  [B]}. Metrics: 'loss' (mean cross-entropy) and 'accuracy'.

  Args:
    model: 'mlp' or 'cnn'.
    num_classes: number of classes.
    input_shape: (H, W, C) of one image.
    hidden: 'mlp': hidden widths, default (200, 200); 'cnn': (conv1 channels,
      conv2 channels, dense width), default (32, 64, 512).
    dtype: compute dtype; params float32.

  Returns:
    A Task with kind 'classification'; flops_per_example from
    `classifiers.classifier_train_flops_per_example` (3× forward).
  """
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"classifier_task: input_shape must be (H, W, C), got "
                     f"{input_shape}")
  if model == "mlp":
    hidden = tuple(classifiers.MLP_HIDDEN if hidden is None else hidden)
    module = classifiers.MLP(num_classes, hidden, jnp.dtype(dtype))
  elif model == "cnn":
    hidden = tuple(classifiers.CNN_HIDDEN if hidden is None else hidden)
    if len(hidden) < 2:
      raise ValueError(f"classifier_task: cnn hidden needs conv channels and a "
                       f"dense width, got {hidden}")
    module = classifiers.CNN(num_classes, hidden, jnp.dtype(dtype))
  else:
    raise ValueError(f"classifier_task: unknown model {model!r}; known: "
                     "['cnn', 'mlp']")

  def init(rng: PRNGKey) -> Params:
    return module.init(rng, jnp.zeros((1,) + input_shape, jnp.float32))["params"]

  def loss_fn(params: Params, batch: Batch, rng: Optional[PRNGKey] = None):
    del rng  # No dropout in these models.
    logits = module.apply({"params": params}, batch["image"])
    loss, accuracy = _classification_metrics(logits, batch["label"])
    return loss, {"loss": loss, "accuracy": accuracy}

  return Task(init=init, loss_fn=loss_fn, num_params=_count(init),
              flops_per_example=classifiers.classifier_train_flops_per_example(
                  model, num_classes=num_classes, input_shape=input_shape,
                  hidden=hidden),
              kind="classification")


# ----------------------------------------------------------------------------
# The model fields of each kind: `config.model`, read into the kind's spec.

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The fields every kind of model has."""
  kind: str = field("lm", spec.one_of(lambda: KINDS.names()))  # The task kind (KINDS).
  dtype: str = field("float32", spec.one_of(DTYPES))  # Compute dtype.
  init_seed: int = field(0, spec.SEED)  # Seed of the initial parameters (all arms share it).


@dataclasses.dataclass(frozen=True)
class LMSpec(ModelSpec):
  """model.kind='lm': a byte-level transformer (models/transformer.py)."""
  d_model: int = field(64, spec.POSITIVE)  # Width.
  num_layers: int = field(2, spec.POSITIVE)  # Transformer blocks.
  num_heads: int = field(4, spec.POSITIVE)  # Attention heads; d_model / num_heads even (RoPE).
  mlp_ratio: int = field(4, spec.POSITIVE)  # MLP hidden width / d_model.
  seq_len: int = field(64, spec.POSITIVE)  # Bytes per input sequence.
  dropout: float = field(0.0, spec.UNIT_OPEN)  # Dropout rate.
  # Rematerialise each block in the backward pass: one block's activations
  # in memory, ~1/3 more compute.
  remat: bool = field(False)

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise spec.ConfigError(
          f"model.d_model: {self.d_model} is not divisible by "
          f"model.num_heads={self.num_heads}")
    if (self.d_model // self.num_heads) % 2:
      raise spec.ConfigError(
          f"model.num_heads: head size d_model / num_heads must be even "
          f"(RoPE), got {self.d_model} / {self.num_heads}")


@dataclasses.dataclass(frozen=True)
class ClassifierSpec(ModelSpec):
  """model.kind='classification': an image classifier (models/classifiers.py)."""
  classifier: str = field("mlp", spec.one_of(("mlp", "cnn")))  # 'mlp' or 'cnn'.
  hidden: Tuple[int, ...] = field((), spec.each(spec.POSITIVE))  # Widths; () = the FedAvg paper's.


def read_model(group) -> ModelSpec:
  """The `model` group read into its kind's spec.

  The group holds every kind's fields (configs/default.py); a field that
  is not the chosen kind's must keep its default (a value set there would be
  silently unused).
  """
  kind_name = spec.check_value(ModelSpec, "kind", group["kind"], "model")
  own = KINDS[kind_name].spec
  others = {f.name: f.default for k in KINDS.names()
            for f in dataclasses.fields(KINDS[k].spec)}
  values = spec.plain(group)
  for name in sorted(set(values) & set(others) - set(spec.names(own))):
    if values[name] != others[name]:
      raise spec.ConfigError(
          f"model.{name}: not a field of model.kind={kind_name!r} (its "
          f"fields: {', '.join(spec.names(own))}); leave it at "
          f"{spec.show(others[name])}")
  return spec.read(own, group, "model", ignore=tuple(others))


# ----------------------------------------------------------------------------
# The task registry: config.model.kind -> data, checks, Task.


class TaskKind(NamedTuple):
  """How the runner builds one kind of task from `config.model`/`config.data`.

  Attributes:
    sources: (data config, model config) -> (train, eval, test) sources:
      eval = data.eval_split (tuning), test = data.test_split (reported
      numbers; None when the dataset has no split apart from eval).
    spec: the kind's model fields (a frozen dataclass, `read_model`),
      checked where they are defined.
    build: (model config, train source) -> Task.
    activation_bytes: (model config, examples) -> a rough upper bound of the
      bytes one replica's forward + backward keeps alive (memory estimate).
    example_units: model config -> tokens per example (1 for a classifier).
    memory_knob: model config -> (field, what to do) that lowers a replica's
      activation memory without changing the batch (LM: turn on model.remat),
      or None when the model has none left.
  """
  sources: Callable[[Any, Any], Tuple[Any, Any, Any]]
  spec: type
  build: Callable[[Any, Any], Task]
  activation_bytes: Callable[[Any, int], float]
  example_units: Callable[[Any], int]
  memory_knob: Callable[[Any], Optional[Tuple[str, str]]] = lambda model: None


def _lm_sources(data, model):
  from fedjax_lab import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.lm_sources(dataset=data.dataset, data_dir=data.data_dir or None,
                             seq_len=model.seq_len, subset=data.subset,
                             max_examples=data.max_examples or None,
                             eval_split=data.eval_split or None,
                             test_split=data.test_split)


def _lm_build(model, train_source):
  del train_source
  return lm_task(d_model=model.d_model, num_layers=model.num_layers,
                 num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                 seq_len=model.seq_len, dtype=model.dtype, dropout=model.dropout,
                 remat=model.remat)


def _lm_activation_bytes(model, examples: int) -> float:
  # With remat, one block's activations plus each block's input.
  blocks = 1 if model.remat else model.num_layers
  per_token = (blocks * model.d_model * (8 + 2 * model.mlp_ratio)
               + model.num_layers * model.d_model
               + blocks * model.num_heads * model.seq_len
               + 3 * 256)
  return 4.0 * examples * model.seq_len * per_token


def _image_sources(data, model):
  del model
  from fedjax_lab import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.image_sources(dataset=data.dataset,
                                data_dir=data.data_dir or None,
                                max_examples=data.max_examples or None,
                                eval_split=data.eval_split or None,
                                test_split=data.test_split)


def _image_build(model, train_source):
  return classifier_task(model=model.classifier,
                         num_classes=train_source.num_classes,
                         input_shape=train_source.images.shape[1:],
                         hidden=tuple(model.hidden) or None, dtype=model.dtype)


def _image_activation_bytes(model, examples: int) -> float:
  widths = tuple(model.hidden) or (512, 512)
  return 4.0 * examples * (4 * 28 * 28 * max(widths[0], 1) + 4 * sum(widths))


KINDS = Registry("task kind", "model.kind", {
    "lm": TaskKind(sources=_lm_sources, spec=LMSpec, build=_lm_build,
                   activation_bytes=_lm_activation_bytes,
                   example_units=lambda model: model.seq_len,
                   memory_knob=lambda model: None if model.remat
                   else ("model.remat", "set it to True")),
    "classification": TaskKind(
        sources=_image_sources, spec=ClassifierSpec, build=_image_build,
        activation_bytes=_image_activation_bytes,
        example_units=lambda model: 1),
})


def kind(name: str) -> TaskKind:
  """The registry entry of `name` (ValueError naming model.kind, listing the kinds)."""
  return KINDS[name]
