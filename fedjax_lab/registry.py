"""A registry: names to factories, the one type behind every `get(name)`.

The outer algorithms (`fedjax_lab.outer.REGISTRY`), the compressors
(`fedjax_lab.comm.compress.REGISTRY`) and the task kinds
(`fedjax_lab.models.tasks.KINDS`) are each one `Registry`. It holds a plain
dict fixed at construction (nothing registers itself at import time) and turns
every mistake into ONE line of ValueError: an unknown name names the config
field and lists the known names, an unknown hyperparameter lists the allowed
ones.

Example::

  reg = Registry("outer algorithm", "outer.name", {"fedavg": fedavg})
  reg.names()                            # ['fedavg']
  reg.hparams("fedavg")   # {'learning_rate': 1.0, 'reset_inner_state': True}
  algo = reg.get("fedavg", learning_rate=0.7)
"""

import inspect
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional


class Registry:
  """Names to factories (or, for task kinds, to plain values).

  Attributes:
    what: what an entry is, for messages ('outer algorithm', 'compressor').
    field: the config field that picks an entry ('outer.name').
  """

  def __init__(self, what: str, field: str, entries: Mapping[str, Any], *,
               extra: Optional[Mapping[str, Any]] = None,
               wrap: Optional[Callable[..., Any]] = None,
               prefix_errors: bool = True):
    """Builds a registry.

    Args:
      what: what an entry is, for messages.
      field: the config field that picks an entry, for messages.
      entries: name -> factory taking keyword hyperparameters (or a value).
      extra: hyperparameters every entry takes besides its factory's own,
        name -> default (the compressors' `ef`); `get` hands them to `wrap`.
      wrap: (name, built, **extra) -> what `get` returns.
      prefix_errors: prefix a factory's ValueError with "<what> '<name>': "
        (False where the factories' messages already name themselves).
    """
    self.what, self.field = what, field
    self._entries = dict(entries)
    self._extra = dict(extra or {})
    self._wrap = wrap
    self._prefix_errors = prefix_errors

  def names(self) -> List[str]:
    """The registered names, sorted."""
    return sorted(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def factory(self, name: str) -> Any:
    """The entry `name` (ValueError naming the field and the known names)."""
    if name not in self._entries:
      raise ValueError(f"{self.field}: unknown {self.what} {name!r}; "
                       f"known: {', '.join(self.names())}")
    return self._entries[name]

  __getitem__ = factory

  def parameters(self, name: str) -> Dict[str, inspect.Parameter]:
    """The named hyperparameters of `name`: its factory's, then `extra`."""
    out = {k: p for k, p in inspect.signature(self.factory(name)).parameters.items()
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for k, default in self._extra.items():
      out[k] = inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY,
                                 default=default, annotation=type(default))
    return out

  def hparams(self, name: str) -> Dict[str, Any]:
    """The hyperparameters `name` takes, with their defaults.

    A parameter without a default maps to `inspect.Parameter.empty`.
    """
    return {k: p.default for k, p in self.parameters(name).items()}

  def get(self, name: str, **hparams) -> Any:
    """Builds entry `name` with keyword hyperparameters.

    Raises:
      ValueError: unknown name (names the field, lists the known ones),
        unknown hyperparameter (lists the allowed ones; skipped for a factory
        taking **kwargs) or the factory's own refusal of a value.
    """
    factory = self.factory(name)
    allowed = self.parameters(name)
    takes_any = any(p.kind is p.VAR_KEYWORD
                    for p in inspect.signature(factory).parameters.values())
    unknown = sorted(k for k in hparams if k not in allowed)
    if unknown and not takes_any:
      raise ValueError(f"{self.what} {name!r}: unknown hyperparameter(s) {unknown}; "
                       f"allowed: {', '.join(allowed) or 'none'}")
    extra = {k: hparams.pop(k) for k in self._extra if k in hparams}
    try:
      built = factory(**hparams)
      return self._wrap(name, built, **extra) if self._wrap else built
    except ValueError as e:
      if not self._prefix_errors:
        raise
      raise ValueError(f"{self.what} {name!r}: {e}") from None
