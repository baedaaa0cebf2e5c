"""The backend contract: what the front end may ask of a backend, and how a ``backend`` argument becomes one.

A backend is a frozen (hashable) dataclass whose fields are its validated options. It carries its ``name``, its
``default_epsilon`` and the row operations it implements (``operations``); each operation maps rows ``[batch, n]``
and one epsilon per row ``[batch]`` to ``[batch, m, ...]`` and never sees ``axis``. Some operations take options
of their own (``operation_options``, e.g. the sinkhorn target measure of ``sort``); a backend turns them into the
keyword arguments of the operation with :meth:`Backend.operation_kwargs`.

The front end (:mod:`otsort._api`) and the losses resolve a ``backend`` argument with :func:`resolve`:
``"pav"`` or ``"sinkhorn"`` with ``**options`` (both backend and operation options), or a backend object (then
``**options`` may only hold that operation's own options).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from otsort import _checks


class Backend:
  """Base of the backend objects :class:`otsort.Pav` and :class:`otsort.Sinkhorn`.

  Subclasses are frozen dataclasses; they set ``name``, ``default_epsilon``, ``operations`` (the names of the row
  operations they implement, each a method of that name) and ``operation_options`` (operation name -> the names
  of the options that operation takes).
  """

  name: ClassVar[str]
  default_epsilon: ClassVar[float]
  operations: ClassVar[frozenset[str]]
  operation_options: ClassVar[dict[str, tuple[str, ...]]] = {}

  def operation(self, op: str) -> Callable[..., Any]:
    """The row operation ``op`` (a bound method); ``ValueError`` naming the backend if it has none."""
    if op not in self.operations:
      offered = sorted(name for name, cls in backend_types().items() if op in cls.operations)
      raise ValueError(
        f"{op} is not an operation of backend {self.name!r} (its operations are "
        f"{', '.join(sorted(self.operations))}); {op} exists on backend(s) "
        f"{', '.join(map(repr, offered))}; got backend = {self!r}"
      )
    return getattr(self, op)

  def operation_kwargs(self, op: str, options: dict[str, Any]) -> dict[str, Any]:
    """Checks the options of operation ``op`` and returns them as the operation's keyword arguments.

    The base class has no operation options: any option is refused.
    """
    if options:
      raise ValueError(f"{op} on backend {self.name!r} takes no option(s) {', '.join(map(repr, sorted(options)))}")
    return {}

  @classmethod
  def from_options(cls, options: dict[str, Any]) -> Backend:
    """The backend configured by ``options`` (names checked, values checked by the dataclass)."""
    _checks.check_option_names(cls.name, options, _checks.field_names(cls))
    return cls(**options)


def backend_types() -> dict[str, type[Backend]]:
  """The backends by name (imported on first use: the backends import this module)."""
  from otsort.pav._backend import Pav  # pylint: disable=import-outside-toplevel
  from otsort.sinkhorn._backend import Sinkhorn  # pylint: disable=import-outside-toplevel

  return {"pav": Pav, "sinkhorn": Sinkhorn}


def resolve(backend: Any, options: dict[str, Any], op: str) -> tuple[Backend, dict[str, Any]]:
  """(the backend object, the keyword arguments of its operation ``op``) for a ``backend`` argument and
  ``**options``.

  Args:
    backend: a backend name (``"pav"``, ``"sinkhorn"``) or a backend object (``otsort.Pav(...)``,
      ``otsort.Sinkhorn(...)``).
    options: the call's ``**options``: with a name, backend options and the options of ``op``; with an object,
      only the options of ``op`` (the backend's own are set on the object).
    op: the operation the call will run; a backend without it raises ``ValueError``.

  Returns:
    ``(backend, kwargs)``: the operation is ``backend.operation(op)``, called with ``**kwargs``.
  """
  types = backend_types()
  if isinstance(backend, Backend):
    cls = type(backend)
    own = set(cls.operation_options.get(op, ()))
    misplaced = sorted(set(options) - own)
    if misplaced:
      fields = set(_checks.field_names(cls))
      hint = (
        f"set backend options on the object, {cls.__name__}({misplaced[0]}=...)"
        if set(misplaced) <= fields
        else f"{cls.__name__}'s options are {', '.join(map(repr, _checks.field_names(cls)))}"
      )
      raise ValueError(
        f"with a backend object, **options may only hold the options of {op} "
        f"({', '.join(map(repr, sorted(own))) or 'none'}); got {', '.join(map(repr, misplaced))} "
        f"with backend = {backend!r}: {hint}"
      )
    resolved = backend
  else:
    if not isinstance(backend, str):
      raise TypeError(
        f"backend must be one of {', '.join(map(repr, types))} or a backend object "
        f"(otsort.Pav(...), otsort.Sinkhorn(...)); got backend = {_checks.show(backend)}"
      )
    _checks.check_choice("backend", backend, tuple(types))
    cls = types[backend]
    own = set(cls.operation_options.get(op, ()))
    every_own = {name for names in cls.operation_options.values() for name in names}
    fields = set(_checks.field_names(cls))
    backend_options = {k: v for k, v in options.items() if k not in own}
    foreign = sorted(set(backend_options) & (every_own - fields))
    if foreign:
      users = sorted(name for name, names in cls.operation_options.items() if set(foreign) & set(names))
      given = ", ".join(f"{k}={_checks.show(options[k])}" for k in foreign)
      raise ValueError(
        f"{op} takes no option(s) {', '.join(map(repr, foreign))} on backend {backend!r}: they are "
        f"options of {', '.join(users)} only; got {given}"
      )
    _checks.check_option_names(backend, backend_options, [*_checks.field_names(cls), *sorted(every_own - fields)])
    resolved = cls(**backend_options)
  resolved.operation(op)  # a backend without op fails here, before its options are looked at
  kwargs = resolved.operation_kwargs(op, {k: v for k, v in options.items() if k in own})
  return resolved, kwargs


def default_epsilon(backend: Any) -> float:
  """The default epsilon of a backend name or object."""
  if isinstance(backend, Backend):
    return backend.default_epsilon
  types = backend_types()
  if not isinstance(backend, str):
    raise TypeError(
      f"backend must be one of {', '.join(map(repr, types))} or a backend object; got backend = {_checks.show(backend)}"
    )
  return types[_checks.check_choice("backend", backend, tuple(types))].default_epsilon
