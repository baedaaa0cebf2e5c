"""The public soft operations, in front of both backends.

Every function works along one ``axis`` of an array of any shape. This module does, once for all operations
and backends: argument checks (at trace time, so they also fire under ``jit``), dtype promotion, moving
``axis`` last and flattening the other dimensions into rows, then dispatch to the backend, which only ever
sees rows ``[batch, n]``.

Dtypes: float32 and float64 are computed as they are; float16 and bfloat16 are computed in float32 and returned
in their own dtype; integers and booleans are promoted to JAX's default float dtype.

``epsilon`` is an ordinary array argument: a Python number, a 0-d array or one value per row (an array
broadcastable to ``x.shape`` without ``axis``). The jitted row application takes it as an operand, so changing
its value never recompiles, and it may be traced (``jit``, ``vmap``, ``grad`` with respect to it).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.typing import ArrayLike
import numpy as np

from otsort import _checks
from otsort.pav import _backend as _pav
from otsort.sinkhorn import _backend as _sinkhorn
from otsort.sinkhorn import _targets as _sinkhorn_targets

_MODULES = {"pav": _pav, "sinkhorn": _sinkhorn}
BACKENDS = tuple(_MODULES)


def _backend_module(backend: Any) -> types.ModuleType:
  _checks.check_choice("backend", backend, BACKENDS)
  return _MODULES[backend]


def _float_dtypes(dtype) -> tuple[jnp.dtype, jnp.dtype]:
  """(dtype to compute in, dtype to return) for an input dtype."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise ValueError(f"x must be real; got dtype {dtype}")
  if not jnp.issubdtype(dtype, jnp.floating):
    promoted = jnp.dtype(jnp.result_type(float))
    return promoted, promoted
  if dtype.itemsize < 4:
    return jnp.dtype(jnp.float32), dtype
  return dtype, dtype


def _map_over_shards(fn: Callable[..., jax.Array], x: jax.Array, aligned: tuple, shared: tuple) -> jax.Array:
  """``fn(x, *aligned, *shared)``, on each device's own rows when ``x`` is sharded over a mesh with explicit axes.

  ``x`` is ``[..., n]``; ``aligned`` arrays share its leading dimensions, ``shared`` ones are whole on every
  device. Without explicit axes, XLA's partitioner does the same through the kernels' partitioning rules, so
  ``fn`` is simply called.
  """
  sharding = jax.typeof(x).sharding
  explicit = set(getattr(sharding.mesh, "explicit_axes", ()))
  spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
  named = lambda entry: {entry} if isinstance(entry, str) else set(entry or ())
  if not any(named(entry) & explicit for entry in spec):
    return fn(x, *aligned, *shared)
  rows = PartitionSpec(*spec[:-1])  # the leading dimensions as they are; each row whole on one device

  def placed(a, target):
    current = tuple(jax.typeof(a).sharding.spec)
    wanted = tuple(target) + (None,) * (a.ndim - len(target))
    if current + (None,) * (a.ndim - len(current)) == wanted:
      return a
    return jax.sharding.reshard(a, NamedSharding(sharding.mesh, target))

  x, *aligned = (placed(a, rows) for a in (x, *aligned))
  shared = tuple(placed(a, PartitionSpec()) for a in shared)
  specs = (rows,) * (1 + len(aligned)) + (PartitionSpec(),) * len(shared)
  # check_vma=False: the native calls carry no varying-axes types, and fn uses no collectives.
  return jax.shard_map(fn, mesh=sharding.mesh, in_specs=specs, out_specs=rows, check_vma=False)(
      x, *aligned, *shared)


@functools.partial(jax.jit, static_argnames=("op", "options", "static"))
def _apply_on_rows(x: jax.Array, epsilon: jax.Array, aligned: tuple, shared: tuple, *, op: Callable, options: Any,
                   static: tuple) -> jax.Array:
  """Flattens ``x [..., n]`` (and ``epsilon [...]``, ``aligned [..., n, ...]``) into rows, applies the backend
  ``op``, and puts the leading dimensions back: ``[..., m, ...]``. Jitted, so that eager calls compile once per
  configuration; ``epsilon`` is an operand, not part of the configuration.

  A row whose epsilon is not positive and finite (only possible when epsilon is traced) is computed with
  epsilon = 1 and comes out NaN; the other rows are unaffected.
  """
  lead = x.shape[:-1]

  def on_rows(x, epsilon, *operands):
    rows = x.reshape(-1, x.shape[-1])
    epsilon = epsilon.reshape(-1)
    valid = (epsilon > 0) & jnp.isfinite(epsilon)
    flat = [a.reshape(rows.shape[0], *a.shape[len(lead):]) for a in operands[:len(aligned)]]
    out = op(rows, *flat, *operands[len(aligned):], epsilon=jnp.where(valid, epsilon, 1), options=options,
             **dict(static))
    out = jnp.where(valid.reshape(-1, *(1,) * (out.ndim - 1)), out, jnp.nan)
    return out.reshape(*x.shape[:-1], *out.shape[1:])

  return _map_over_shards(on_rows, x, (epsilon, *aligned), shared)


class _Call:
  """One call's validated arguments: the rows, and how to put results back in the caller's layout."""

  def __init__(self, x: ArrayLike, axis: Any, backend: Any, epsilon: Any, options: dict):
    self.module = _backend_module(backend)
    self.options = self.module.parse_options(options)
    x = jnp.asarray(x)
    if x.ndim == 0:
      raise ValueError("x must have at least one dimension to work along; got a scalar")
    self.shape = x.shape
    self.axis = _checks.normalize_axis(axis, x.ndim)
    self.compute_dtype, self.out_dtype = _float_dtypes(x.dtype)
    self.x = jnp.moveaxis(x.astype(self.compute_dtype), self.axis, -1)
    self.n = self.x.shape[-1]
    epsilon = self.module.DEFAULT_EPSILON if epsilon is None else epsilon
    self.epsilon = _checks.epsilon_array(epsilon, self.x.shape[:-1], self.axis, self.compute_dtype)

  def run(self, op: Callable[..., jax.Array], length: int, *, aligned: tuple = (), shared: tuple = (),
          features: tuple = (), **static) -> jax.Array:
    """Applies the backend's ``op`` (rows ``[batch, n]`` to ``[batch, m]``) along ``axis``.

    ``length`` is the m an empty input gets (a backend option may change it, e.g. sinkhorn's ``num_targets``).
    ``aligned`` arrays ``[..., n, ...]`` are cut into rows with ``x`` (their ``axis`` already moved to
    ``x.ndim - 1``); ``shared`` arrays go to every row; ``features`` are trailing output dimensions after the m
    values; ``static`` keywords are passed as they are.
    """
    if self.x.size == 0:
      out = jnp.zeros((*self.x.shape[:-1], length, *features), self.compute_dtype)
    else:
      out = _apply_on_rows(self.x, self.epsilon, aligned, shared, op=op, options=self.options,
                           static=tuple(sorted(static.items())))
    return jnp.moveaxis(out.astype(self.out_dtype), self.x.ndim - 1, self.axis)

  def check_k(self, k: Any) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n:
      raise ValueError(f"k must be an int in [1, n] with n = x.shape[axis] = {self.n}; got k = {k!r}")
    return int(k)


def _check_descending(descending: Any) -> bool:
  if not isinstance(descending, (bool, np.bool_)):
    raise ValueError(f"descending must be True or False; got descending = {descending!r}")
  return bool(descending)


def sort(x: ArrayLike, *, axis: int = -1, descending: bool = False, epsilon: ArrayLike | None = None,
         backend: str = "pav", **options: Any) -> jax.Array:
  r"""Soft sort: a differentiable relaxation of :func:`jax.numpy.sort`.

  With ``backend="pav"`` the soft sort of a row :math:`x \in \mathbb{R}^n` is the projection of
  :math:`\rho / \varepsilon`, :math:`\rho = (n, \dots, 1)`, onto the permutahedron of :math:`x` (all
  permutations of :math:`x` and their convex combinations):

  .. math::

    s_\varepsilon(x) = \arg\min_{\mu \in \mathcal{P}(x)} \tfrac12 \| \mu - \rho / \varepsilon \|^2
    \quad (\text{L2}), \qquad\text{or the KL projection in the log domain (KL)}.

  As :math:`\varepsilon \to 0` it is the hard sort; as :math:`\varepsilon \to \infty` every value tends to the
  mean of the row (L2). The L2 soft sort keeps the sum of the row.

  Args:
    x: input array ``[..., n, ...]``, sorted along ``axis``.
    axis: the axis to sort along.
    descending: sort in decreasing order instead of increasing.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default (``pav``: 1.0, the paper's
      ``regularization_strength``). Smaller is closer to the hard sort, larger gives smoother gradients.
    backend: ``"pav"``.
    **options: backend options. ``pav``: ``regularization="l2" | "kl"``, ``impl="auto" | "native" | "xla"``.

  Returns:
    An array of the shape and dtype of ``x`` (integers are promoted to floats), sorted along ``axis``.

  Example:
    >>> import otsort
    >>> otsort.sort([3.0, 1.0, 2.0], epsilon=0.1)
    Array([1., 2., 3.], dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  call = _Call(x, axis, backend, epsilon, options)
  return call.run(call.module.sort, call.n, descending=_check_descending(descending))


def ranks(x: ArrayLike, *, axis: int = -1, descending: bool = False, epsilon: ArrayLike | None = None,
          backend: str = "pav", **options: Any) -> jax.Array:
  r"""Soft ranks: a differentiable relaxation of ``argsort(argsort(x))``, 0-based.

  With ``backend="pav"`` the soft ranks of a row are the projection of :math:`x / \varepsilon` onto the
  permutahedron of :math:`\rho = (n, \dots, 1)`, minus one:

  .. math::

    r_\varepsilon(x) = \arg\min_{\mu \in \mathcal{P}(\rho)} \tfrac12 \| \mu - x / \varepsilon \|^2 - 1
    \quad (\text{L2}), \qquad\text{or the KL projection (KL, ranks stay above } -1\text{)}.

  As :math:`\varepsilon \to 0` the smallest value gets rank 0 and the largest :math:`n - 1` (ties share the
  mean of their ranks); as :math:`\varepsilon \to \infty` every rank tends to :math:`(n - 1) / 2`. L2 ranks of a
  row always sum to :math:`n (n - 1) / 2`.

  Args:
    x: input array ``[..., n, ...]``, ranked along ``axis``.
    axis: the axis to rank along.
    descending: rank in decreasing order (the largest value gets rank 0).
    epsilon: regularization strength, > 0; ``None`` picks the backend's default (``pav``: 1.0).
    backend: ``"pav"``.
    **options: backend options, as for :func:`sort`.

  Returns:
    An array of the shape of ``x``, in ``x``'s float dtype (integers are promoted).

  Example:
    >>> import otsort
    >>> otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1)
    Array([2., 0., 1.], dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  call = _Call(x, axis, backend, epsilon, options)
  return call.run(call.module.ranks, call.n, descending=_check_descending(descending))


def _check_q(q: Any) -> tuple[tuple[float, ...], bool]:
  """(the quantile levels, whether q was a scalar); q must be static and in [0, 1]."""
  if isinstance(q, jax.core.Tracer):
    raise ValueError("q must be static (a Python float or a sequence of them), not a traced value: it fixes "
                     "the output shape")
  levels = np.asarray(q, dtype=np.float64) if not isinstance(q, str) else None
  if levels is None or levels.ndim > 1 or levels.size == 0:
    raise ValueError(f"q must be a number or a non-empty 1-D sequence of numbers in [0, 1]; got q = {q!r}")
  if not np.all((levels >= 0) & (levels <= 1)):
    raise ValueError(f"q must lie in [0, 1]; got q = {q!r}")
  return tuple(float(v) for v in levels.reshape(-1)), levels.ndim == 0


def quantile(x: ArrayLike, q: float | Sequence[float], *, axis: int = -1, epsilon: ArrayLike | None = None,
             backend: str = "pav", **options: Any) -> jax.Array:
  r"""Soft quantiles: a differentiable relaxation of :func:`jax.numpy.quantile` (linear interpolation).

  ``pav``: the soft sort of the row, linearly interpolated at position :math:`q (n - 1)` like
  :func:`jax.numpy.quantile`. ``sinkhorn``: the inputs are transported onto a target measure with mass around
  each requested level (Cuturi et al., 2019), and read out by barycentric projection.

  Args:
    x: input array ``[..., n, ...]``.
    q: a level in [0, 1], or a 1-D sequence of levels; static (Python numbers or a NumPy array).
    axis: the axis to take quantiles along.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` or ``"sinkhorn"``.
    **options: backend options.

  Returns:
    For a scalar ``q``, ``x``'s shape without ``axis``; for a sequence, ``axis`` replaced by ``len(q)`` values
    in the order given.

  Example:
    >>> import otsort
    >>> otsort.quantile([1.0, 5.0, 2.0, 4.0, 3.0], 0.5, epsilon=1e-3)
    Array(3., dtype=float32)
  """
  levels, scalar = _check_q(q)
  call = _Call(x, axis, backend, epsilon, options)
  if call.n == 0:
    raise ValueError("quantile needs at least one value along axis; got x.shape[axis] = 0")
  out = call.run(call.module.quantile, len(levels), q=levels)
  return jnp.squeeze(out, call.axis) if scalar else out


def topk(x: ArrayLike, k: int, *, axis: int = -1, epsilon: ArrayLike | None = None, backend: str = "pav",
         **options: Any) -> jax.Array:
  r"""Soft top-k values: a differentiable relaxation of :func:`jax.lax.top_k`, in decreasing order.

  ``pav``: the first k entries of the decreasing soft sort. ``sinkhorn``: transport onto k + 1 targets, the
  k largest values and the rest (Cuturi et al., 2019), O(nk).

  Args:
    x: input array ``[..., n, ...]``.
    k: how many values to keep, in [1, n].
    axis: the axis to take the top k along (``jax.lax.top_k`` only takes the last).
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` or ``"sinkhorn"``.
    **options: backend options.

  Returns:
    ``x``'s shape with ``axis`` of size ``k``, the largest value first.

  Example:
    >>> import otsort
    >>> otsort.topk([1.0, 5.0, 2.0, 4.0], 2, epsilon=1e-3)
    Array([5., 4.], dtype=float32)
  """
  call = _Call(x, axis, backend, epsilon, options)
  k = call.check_k(k)
  return call.run(call.module.topk, k, k=k)


def topk_mask(x: ArrayLike, k: int, *, axis: int = -1, epsilon: ArrayLike | None = None, backend: str = "pav",
              **options: Any) -> jax.Array:
  r"""Soft top-k mask: a differentiable relaxation of the 0/1 indicator of the k largest entries.

  ``pav``: the projection of :math:`x / \varepsilon` onto the permutahedron of :math:`(1, \dots, 1, 0, \dots,
  0)` with k ones (Sander et al., "Fast, Differentiable and Sparse Top-k", ICML 2023); with L2 it is sparse,
  exactly 0 or 1 away from the k-th value. ``sinkhorn``: transport onto two targets holding mass
  :math:`(n - k) / n` and :math:`k / n` (Cuturi et al., 2019).

  Args:
    x: input array ``[..., n, ...]``.
    k: the number of entries to select, in [1, n].
    axis: the axis to select along.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` or ``"sinkhorn"``.
    **options: backend options.

  Returns:
    An array of ``x``'s shape, values in [0, 1] summing to k along ``axis``.

  Example:
    >>> import otsort
    >>> otsort.topk_mask([1.0, 5.0, 2.0, 4.0], 2, epsilon=1e-3)
    Array([0., 1., 0., 1.], dtype=float32)
  """
  call = _Call(x, axis, backend, epsilon, options)
  k = call.check_k(k)
  return call.run(call.module.topk_mask, call.n, k=k)


def _sinkhorn_only(name: str, backend: Any) -> None:
  if backend != "sinkhorn":
    raise ValueError(f"{name} exists on the sinkhorn backend only: it reads the transport plan onto a target "
                     f"measure, which the pav projections do not have; got backend = {backend!r}")


def quantize(x: ArrayLike, num_levels: int, *, axis: int = -1, epsilon: ArrayLike | None = None,
             backend: str = "sinkhorn", **options: Any) -> jax.Array:
  r"""Soft quantization onto ``num_levels`` levels (``sinkhorn`` backend only, as ``ott.tools.soft_sort``).

  Each row is transported onto ``num_levels`` uniform targets; each input is then replaced by the average
  level it is sent to. As :math:`\varepsilon \to 0` every value is replaced by the mean of its quantile bin.

  Args:
    x: input array ``[..., n, ...]``.
    num_levels: the number of levels, an int >= 2 (a Python or NumPy integer, or a concrete 0-d integer array).
    axis: the axis to quantize along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"``.
    **options: sinkhorn options (solver settings; target options are not allowed here).

  Returns:
    An array of the shape of ``x``.

  References:
    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019.
  """
  _sinkhorn_only("quantize", backend)
  num_levels = _check_num_levels(num_levels)
  call = _Call(x, axis, backend, epsilon, options)
  _sinkhorn.reject_custom_target(call.options, "quantize")
  return call.run(call.module.quantize, call.n, num_levels=num_levels)


def _check_num_levels(num_levels: Any) -> int:
  """``num_levels`` as a Python int >= 2: an int, a NumPy integer or a concrete 0-d integer array."""
  value = num_levels
  if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
    value = np.asarray(value)[()]
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 2:
    raise ValueError(f"num_levels must be an int >= 2 (a Python or NumPy integer, or a concrete 0-d integer "
                     f"array; it fixes the number of targets, so it cannot be traced); got num_levels = "
                     f"{num_levels!r}")
  return int(value)


def _check_real(name: str, value: jax.Array) -> None:
  if jnp.issubdtype(value.dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be real; got dtype {value.dtype}")


def sort_with(x: ArrayLike, values: ArrayLike, *, topk: int | None = None, axis: int = -1,
              epsilon: ArrayLike | None = None, backend: str = "sinkhorn", **options: Any) -> jax.Array:
  r"""Soft-sorts ``values`` by the criterion ``x`` (``sinkhorn`` backend only), like ``values[argsort(x)]``.

  Each output is the average of the ``values`` sent to one target of the transport of ``x``.

  Args:
    x: the criterion ``[..., n, ...]``.
    values: real, ``x.shape`` followed by any feature dimensions ``[..., n, ..., *features]``; sorted along
      ``axis`` (complex values are refused: the transport plan is real).
    topk: ``None`` sorts all values in increasing order of ``x``; an int ``k`` keeps the values of the ``k``
      largest criteria, in decreasing order like :func:`topk`.
    axis: the axis of ``x`` (and ``values``) to sort along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"``.
    **options: sinkhorn options.

  Returns:
    ``values`` with ``axis`` of size n (or ``k``, or the number of targets).
  """
  _sinkhorn_only("sort_with", backend)
  call = _Call(x, axis, backend, epsilon, options)
  values = jnp.asarray(values)
  _check_real("values", values)
  values = values.astype(call.compute_dtype)
  if values.shape[:len(call.shape)] != call.shape:
    raise ValueError(f"values must have x's shape {call.shape} followed by feature dimensions; got "
                     f"values.shape = {values.shape}")
  if topk is not None:
    topk = call.check_k(topk)
    _sinkhorn.reject_custom_target(call.options, "sort_with(topk=k)")
  moved = jnp.moveaxis(values, call.axis, call.x.ndim - 1)
  return call.run(_sort_with_rows, topk or call.n, aligned=(moved,), features=values.shape[call.x.ndim:],
                  topk=topk)


def _sort_with_rows(rows: jax.Array, values: jax.Array, *, topk: int | None, epsilon: jax.Array, options: Any):
  """The sinkhorn backend's ``sort_with`` on values ``[batch, n, *features]`` (it takes ``[batch, n, d]``)."""
  out = _sinkhorn.sort_with(rows, values.reshape(*values.shape[:2], -1), topk, epsilon=epsilon, options=options)
  return out.reshape(*out.shape[:2], *values.shape[2:])


def quantile_normalization(x: ArrayLike, targets: ArrayLike, *, weights: ArrayLike | None = None, axis: int = -1,
                           epsilon: ArrayLike | None = None, backend: str = "sinkhorn", **options: Any) -> jax.Array:
  r"""Soft quantile normalization (``sinkhorn`` backend only): gives each row the distribution of ``targets``
  while keeping its order.

  Args:
    x: input array ``[..., n, ...]``.
    targets: ``[m]`` values, ``m >= 2``, finite and sorted increasingly (non-decreasing), that the rows are
      mapped onto. A concrete ``targets`` is checked; a traced one (under ``jit`` or ``grad`` with respect to
      it) can only be checked for its shape: unsorted or non-finite traced targets give a result that does not
      keep the order of the rows, or NaN.
    weights: ``None`` (uniform) or ``[m]`` positive, finite weights summing to 1 (concrete values).
    axis: the axis to normalize along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"``.
    **options: sinkhorn options (solver settings).

  Returns:
    An array of the shape of ``x``.

  References:
    Cuturi, Teboul, Niles-Weed, Vert, "Supervised Quantile Normalization for Low-rank Matrix Approximation",
    ICML 2020.
  """
  _sinkhorn_only("quantile_normalization", backend)
  call = _Call(x, axis, backend, epsilon, options)
  _sinkhorn.reject_custom_target(call.options, "quantile_normalization")
  targets = _check_targets(targets, call.compute_dtype)
  if weights is not None:
    weights = _sinkhorn_targets.check_weights(weights, name="weights", length=targets.shape[0])
  return call.run(call.module.quantile_normalization, call.n, shared=(targets,), weights=weights)


def _check_targets(targets: Any, dtype: Any) -> jax.Array:
  """``quantile_normalization``'s targets: ``[m]``, ``m >= 2``, real; if concrete, finite and non-decreasing."""
  if isinstance(targets, (str, bytes)):
    raise ValueError(f"targets must be a 1-D array of at least 2 real values; got targets = {targets!r}")
  array = jnp.asarray(targets)
  _check_real("targets", array)
  if array.ndim != 1 or array.shape[0] < 2:
    raise ValueError(f"targets must be a 1-D array [m] of at least 2 values; got targets.shape = {array.shape}")
  if not isinstance(targets, jax.core.Tracer) and not isinstance(array, jax.core.Tracer):
    value = np.asarray(array, np.float64)
    if not np.all(np.isfinite(value)):
      raise ValueError(f"targets must be finite; got targets = {value.tolist()}")
    if np.any(np.diff(value) < 0):
      at = int(np.flatnonzero(np.diff(value) < 0)[0])
      raise ValueError(f"targets must be sorted in non-decreasing order (the rows are mapped onto them in order); "
                       f"got targets[{at}] = {float(value[at])!r} > targets[{at + 1}] = {float(value[at + 1])!r} in targets = "
                       f"{value.tolist()}")
  return array.astype(dtype)
