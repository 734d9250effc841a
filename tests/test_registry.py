"""The one registry type behind the outer algorithms, compressors and tasks."""

import inspect

import jax.numpy as jnp
import pytest

from fedjax_lab import outer
from fedjax_lab.comm import compress
from fedjax_lab.models import tasks
from fedjax_lab.registry import Registry


def _scale(*, factor: float = 2.0, offset: int = 0):
  if factor <= 0:
    raise ValueError(f"factor must be > 0, got {factor}")
  return lambda x: factor * x + offset


def _anything(*, base: int = 1, **rest):
  return (base, rest)


def _tiny(**kwargs):
  return Registry("shape", "toy.name",
                  {"scale": _scale, "anything": _anything, "nothing": lambda: 0},
                  **kwargs)


def test_names_are_sorted_and_iterable():
  reg = _tiny()
  assert reg.names() == ["anything", "nothing", "scale"]
  assert list(reg) == reg.names()
  assert "scale" in reg and "cube" not in reg
  assert reg["scale"] is _scale and reg.factory("scale") is _scale


def test_hparams_are_the_signature_defaults():
  reg = _tiny()
  assert reg.hparams("scale") == {"factor": 2.0, "offset": 0}
  assert reg.hparams("anything") == {"base": 1}  # **rest is not a name.
  assert reg.hparams("nothing") == {}
  assert reg.parameters("scale")["factor"].annotation is float


def test_get_builds_with_hparams():
  reg = _tiny()
  assert reg.get("scale")(1.0) == 2.0
  assert reg.get("scale", factor=3.0, offset=1)(2.0) == 7.0
  assert reg.get("anything", base=2, tail=3) == (2, {"tail": 3})  # **kwargs.


@pytest.mark.parametrize("call", [
    lambda reg: reg.get("cube"),
    lambda reg: reg["cube"],
    lambda reg: reg.hparams("cube"),
])
def test_unknown_name_names_the_field_and_the_known_names(call):
  with pytest.raises(ValueError) as e:
    call(_tiny())
  assert str(e.value) == ("toy.name: unknown shape 'cube'; "
                          "known: anything, nothing, scale")


def test_unknown_hparam_lists_the_allowed_ones():
  with pytest.raises(ValueError) as e:
    _tiny().get("scale", factr=3.0, x=1)
  assert str(e.value) == ("shape 'scale': unknown hyperparameter(s) "
                          "['factr', 'x']; allowed: factor, offset")
  with pytest.raises(ValueError, match=r"allowed: none$"):
    _tiny().get("nothing", factor=1.0)


def test_factory_error_is_prefixed_unless_told_not_to():
  with pytest.raises(ValueError) as e:
    _tiny().get("scale", factor=-1.0)
  assert str(e.value) == "shape 'scale': factor must be > 0, got -1.0"
  with pytest.raises(ValueError) as e:
    _tiny(prefix_errors=False).get("scale", factor=-1.0)
  assert str(e.value) == "factor must be > 0, got -1.0"


def test_extra_hparams_go_to_wrap():
  seen = []

  def wrap(name, built, *, double=False):
    seen.append((name, double))
    return (lambda x: 2 * built(x)) if double else built

  reg = _tiny(extra={"double": False}, wrap=wrap)
  assert reg.hparams("scale") == {"factor": 2.0, "offset": 0, "double": False}
  assert reg.parameters("scale")["double"].annotation is bool
  assert reg.get("scale", double=True)(1.0) == 4.0
  assert reg.get("scale")(1.0) == 2.0
  assert seen == [("scale", True), ("scale", False)]
  with pytest.raises(ValueError, match=r"allowed: factor, offset, double$"):
    reg.get("scale", triple=True)


# ----------------------------------------------------------- the real ones


def test_outer_registry():
  assert isinstance(outer.REGISTRY, Registry)
  assert outer.names() == outer.REGISTRY.names()
  with pytest.raises(ValueError, match=r"^outer.name: unknown outer algorithm "
                     r"'x'; known: .*diloco"):
    outer.get("x")
  required = {"scaffold": {"local_lr": 0.05}}  # Its default None must be set.
  for name in outer.names():
    assert hasattr(outer.get(name, **required.get(name, {})), "init"), name
    params = inspect.signature(outer.REGISTRY[name]).parameters
    assert list(outer.hparams(name)) == list(params), name


def test_compressor_registry():
  assert isinstance(compress.REGISTRY, Registry)
  assert "int8" in compress.names() and "none" in compress.names()
  x = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)}
  for name in compress.names():
    assert compress.hparams(name)["ef"] is False, name
    c = compress.get(name)
    assert callable(c.compress) and c.payload_bytes(x) > 0, name
    if name != "none":
      state = compress.get(name, ef=True).init(x)
      assert isinstance(state, compress.ErrorFeedbackState), name


def test_task_registry():
  assert isinstance(tasks.KINDS, Registry)
  assert tasks.KINDS.names() == ["classification", "lm"]
  for name in tasks.KINDS.names():
    assert isinstance(tasks.kind(name), tasks.TaskKind)
  with pytest.raises(ValueError, match=r"^model.kind: unknown task kind 'cnn'; "
                     r"known: classification, lm$"):
    tasks.kind("cnn")
