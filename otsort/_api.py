"""The public soft operations, in front of both backends.

Every function works along one ``axis`` of an array of any shape. This module does, once for all operations
and backends: argument checks (at trace time, so they also fire under ``jit``), dtype promotion, moving
``axis`` last and flattening the other dimensions into rows, then dispatch to the backend, which only ever
sees rows ``[batch, n]``. The dispatch goes through the backend contract (:mod:`otsort._contract`): ``backend`` is
a name with ``**options`` or a backend object, and each operation is a method of that object; output shapes are
the operation's own (an empty input asks it with :func:`jax.eval_shape`).

Dtypes: float32 and float64 are computed as they are; float16 and bfloat16 are computed in float32 and returned
in their own dtype; integers and booleans are promoted to JAX's default float dtype.

``epsilon`` is an ordinary array argument: a Python number, a 0-d array or one value per row (an array
broadcastable to ``x.shape`` without ``axis``). The jitted row application takes it as an operand, so changing
its value never recompiles, and it may be traced (``jit``, ``vmap``, ``grad`` with respect to it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.typing import ArrayLike
import numpy as np

from otsort import _checks
from otsort import _contract
from otsort._contract import Backend


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
  return jax.shard_map(fn, mesh=sharding.mesh, in_specs=specs, out_specs=rows, check_vma=False)(x, *aligned, *shared)


@functools.partial(jax.jit, static_argnames=("backend", "op", "static"))
def _apply_on_rows(
  x: jax.Array, epsilon: jax.Array, aligned: tuple, shared: tuple, *, backend: Backend, op: str, static: tuple
) -> jax.Array:
  """Flattens ``x [..., n]`` (and ``epsilon [...]``, ``aligned [..., n, ...]``) into rows, applies the backend
  operation ``op`` of ``backend`` (a hashable object: equal backends share the compilation), and puts the leading
  dimensions back: ``[..., m, ...]``. Jitted, so that eager calls compile once per configuration; ``epsilon`` is an
  operand, not part of the configuration.

  A row whose epsilon is not positive and finite (only possible when epsilon is traced) is computed with
  epsilon = 1 and comes out NaN; the other rows are unaffected.
  """
  lead = x.shape[:-1]

  def on_rows(x, epsilon, *operands):
    rows = x.reshape(-1, x.shape[-1])
    epsilon = epsilon.reshape(-1)
    valid = (epsilon > 0) & jnp.isfinite(epsilon)
    flat = [a.reshape(rows.shape[0], *a.shape[len(lead) :]) for a in operands[: len(aligned)]]
    out = backend.operation(op)(
      rows, *flat, *operands[len(aligned) :], epsilon=jnp.where(valid, epsilon, 1), **dict(static)
    )
    out = jnp.where(valid.reshape(-1, *(1,) * (out.ndim - 1)), out, jnp.nan)
    return out.reshape(*x.shape[:-1], *out.shape[1:])

  return _map_over_shards(on_rows, x, (epsilon, *aligned), shared)


class _Call:
  """One call's validated arguments: the backend operation, the rows, and how to put results back in the caller's
  layout."""

  def __init__(self, op: str, x: ArrayLike, axis: Any, backend: Any, epsilon: Any, options: dict):
    self.backend, self.kwargs = _contract.resolve(backend, options, op)
    self.op_name, self.op = op, self.backend.operation(op)
    x = _checks.as_array("x", x)
    self.compute_dtype, self.out_dtype = _checks.float_dtypes(x.dtype, "x")
    if x.ndim == 0:
      raise ValueError("x must have at least one dimension to work along; got a scalar")
    self.shape = x.shape
    self.axis = _checks.normalize_axis(axis, x.ndim)
    self.x = jnp.moveaxis(x.astype(self.compute_dtype), self.axis, -1)
    self.n = self.x.shape[-1]
    epsilon = self.backend.default_epsilon if epsilon is None else epsilon
    self.epsilon = _checks.epsilon_array(epsilon, self.x.shape[:-1], self.axis, self.compute_dtype)

  def run(self, *, aligned: tuple = (), shared: tuple = (), **static: Any) -> jax.Array:
    """Applies the backend operation (rows ``[batch, n]`` to ``[batch, m, ...]``) along ``axis``.

    ``aligned`` arrays ``[..., n, ...]`` are cut into rows with ``x`` (their ``axis`` already moved to
    ``x.ndim - 1``); ``shared`` arrays go to every row; ``static`` keywords (with the operation options) are passed
    as they are. An empty input gets the output shape the operation gives one row of ``n`` values.
    """
    static = tuple(sorted({**self.kwargs, **static}.items()))
    if self.x.size == 0:
      lead = self.x.shape[:-1]
      one_row = lambda a: jax.ShapeDtypeStruct((1, *a.shape[len(lead) :]), a.dtype)
      probe = lambda rows, epsilon, *operands: self.op(rows, *operands, epsilon=epsilon, **dict(static))
      shape = jax.eval_shape(
        probe, one_row(self.x), jax.ShapeDtypeStruct((1,), self.compute_dtype), *map(one_row, aligned), *shared
      )
      out = jnp.zeros((*lead, *shape.shape[1:]), self.compute_dtype)
    else:
      out = _apply_on_rows(self.x, self.epsilon, aligned, shared, backend=self.backend, op=self.op_name, static=static)
    return jnp.moveaxis(out.astype(self.out_dtype), self.x.ndim - 1, self.axis)

  def check_k(self, k: Any, name: str = "k") -> int:
    return _checks.check_int(name, k, low=1, high=self.n, where=f"with n = x.shape[axis] = {self.n}")


def sort(
  x: ArrayLike,
  *,
  axis: int = -1,
  descending: bool = False,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft sort: a differentiable relaxation of :func:`jax.numpy.sort`.

  With ``backend="pav"`` the soft sort of a row :math:`x \in \mathbb{R}^n` is the projection of
  :math:`\rho / \varepsilon`, :math:`\rho = (n, \dots, 1)`, onto the permutahedron of :math:`x` (all
  permutations of :math:`x` and their convex combinations):

  .. math::

    s_\varepsilon(x) = \arg\min_{\mu \in \mathcal{P}(x)} \tfrac12 \| \mu - \rho / \varepsilon \|^2
    \quad (\text{L2}), \qquad\text{or the KL projection in the log domain (KL)}.

  As :math:`\varepsilon \to 0` it is the hard sort; as :math:`\varepsilon \to \infty` every value tends to the
  mean of the row (L2). The L2 soft sort keeps the sum of the row. With ``backend="sinkhorn"`` the row is
  transported onto ``n`` uniform targets (or a target measure of your choice) and each target reads the average
  of the values sent to it (Cuturi et al., 2019).

  Args:
    x: input array ``[..., n, ...]``, sorted along ``axis``.
    axis: the axis to sort along.
    descending: sort in decreasing order instead of increasing.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default (``otsort.Pav.default_epsilon``
      = 1.0, the paper's ``regularization_strength``; ``otsort.Sinkhorn.default_epsilon`` = 1e-2). Smaller is
      closer to the hard sort, larger gives smoother gradients. A number or one value per row.
    backend: ``"pav"`` (the default), ``"sinkhorn"``, or a backend object, :class:`otsort.Pav` or
      :class:`otsort.Sinkhorn`.
    **options: with a backend name, its options (``pav``: ``regularization``, ``impl``; ``sinkhorn``: see
      :class:`otsort.Sinkhorn`). ``sinkhorn`` sort also takes ``target``, ``num_targets`` or ``target_weights``
      (also with a backend object): then it returns ``m`` values, one per target.

  Returns:
    An array of the shape and dtype of ``x`` (integers are promoted to floats), sorted along ``axis``; with a
    sinkhorn target measure of ``m`` targets, ``axis`` has size ``m``.

  Example:
    >>> import otsort
    >>> otsort.sort([3.0, 1.0, 2.0], epsilon=0.1)
    Array([1., 2., 3.], dtype=float32)
    >>> otsort.sort([3.0, 1.0, 2.0], epsilon=10.0)  # large epsilon: every value tends to the mean
    Array([1.9, 2. , 2.1], dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.

    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019.
  """
  call = _Call("sort", x, axis, backend, epsilon, options)
  return call.run(descending=_checks.check_bool("descending", descending))


def ranks(
  x: ArrayLike,
  *,
  axis: int = -1,
  descending: bool = False,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft ranks: a differentiable relaxation of ``argsort(argsort(x))``, 0-based.

  With ``backend="pav"`` the soft ranks of a row are the projection of :math:`x / \varepsilon` onto the
  permutahedron of :math:`\rho = (n, \dots, 1)`, minus one:

  .. math::

    r_\varepsilon(x) = \arg\min_{\mu \in \mathcal{P}(\rho)} \tfrac12 \| \mu - x / \varepsilon \|^2 - 1
    \quad (\text{L2}), \qquad\text{or the KL projection (KL, ranks stay above } -1\text{)}.

  As :math:`\varepsilon \to 0` the smallest value gets rank 0 and the largest :math:`n - 1` (ties share the
  mean of their ranks); as :math:`\varepsilon \to \infty` every rank tends to :math:`(n - 1) / 2`. L2 ranks of a
  row always sum to :math:`n (n - 1) / 2`. With ``backend="sinkhorn"`` the rank of a value is the average target
  position it is transported to, rescaled to :math:`[0, n - 1]`.

  Args:
    x: input array ``[..., n, ...]``, ranked along ``axis``.
    axis: the axis to rank along.
    descending: rank in decreasing order (the largest value gets rank 0).
    epsilon: regularization strength, > 0; ``None`` picks the backend's default (``pav``: 1.0, ``sinkhorn``:
      1e-2).
    backend: ``"pav"`` (the default), ``"sinkhorn"``, or a backend object, :class:`otsort.Pav` or
      :class:`otsort.Sinkhorn`.
    **options: backend options, as for :func:`sort` (sinkhorn ranks also take a target measure).

  Returns:
    An array of the shape of ``x``, in ``x``'s float dtype (integers are promoted).

  Example:
    >>> import otsort
    >>> otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1)
    Array([2., 0., 1.], dtype=float32)
    >>> otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1, descending=True)
    Array([0., 2., 1.], dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  call = _Call("ranks", x, axis, backend, epsilon, options)
  return call.run(descending=_checks.check_bool("descending", descending))


def _check_q(q: Any) -> tuple[tuple[float, ...], bool]:
  """(the quantile levels, whether q was a scalar); q must be static real numbers in [0, 1]."""
  message = "q must be a number or a non-empty 1-D sequence of numbers in [0, 1]"
  if _checks.is_traced(q):
    raise TypeError(f"{message}, static (Python or NumPy numbers), not a traced value: it fixes the output shape")
  if (
    q is None
    or isinstance(q, (bool, np.bool_, str, bytes, dict, set))
    or (isinstance(q, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in q))
  ):
    raise TypeError(f"{message}; got q = {_checks.show(q)}")
  try:
    levels = np.asarray(q)
  except (TypeError, ValueError):
    raise TypeError(f"{message}; got q = {_checks.show(q)}") from None
  if levels.dtype == np.bool_ or not (
    np.issubdtype(levels.dtype, np.integer) or np.issubdtype(levels.dtype, np.floating)
  ):
    raise TypeError(f"{message}; got q = {_checks.show(q)} (dtype {levels.dtype})")
  if levels.ndim > 1 or levels.size == 0:
    raise ValueError(f"{message}; got q = {_checks.show(q)}")
  levels = levels.astype(np.float64)
  if not np.all((levels >= 0) & (levels <= 1)):
    raise ValueError(f"q must lie in [0, 1]; got q = {_checks.show(q)}")
  return tuple(float(v) for v in levels.reshape(-1)), levels.ndim == 0


def quantile(
  x: ArrayLike,
  q: float | Sequence[float],
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft quantiles: a differentiable relaxation of :func:`jax.numpy.quantile` (linear interpolation).

  ``pav``: the soft sort of the row, linearly interpolated at position :math:`q (n - 1)` like
  :func:`jax.numpy.quantile`. ``sinkhorn``: the inputs are transported onto a target measure with mass around
  each requested level (Cuturi et al., 2019), and read out by barycentric projection: the value at cumulative mass
  ``q``, which can differ from the interpolation by up to one sorted position.

  Args:
    x: input array ``[..., n, ...]``, ``n >= 1``.
    q: a level in [0, 1], or a 1-D sequence of levels; static (Python or NumPy numbers, not booleans).
    axis: the axis to take quantiles along.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` (the default), ``"sinkhorn"``, or a backend object.
    **options: with a backend name, its options.

  Returns:
    For a scalar ``q``, ``x``'s shape without ``axis``; for a sequence, ``axis`` replaced by ``len(q)`` values
    in the order given.

  Example:
    >>> import otsort
    >>> otsort.quantile([1.0, 5.0, 2.0, 4.0, 3.0], 0.5, epsilon=1e-3)
    Array(3., dtype=float32)
    >>> otsort.quantile([1.0, 5.0, 2.0, 4.0, 3.0], [0.25, 1.0], epsilon=1e-3)
    Array([2., 5.], dtype=float32)
  """
  levels, scalar = _check_q(q)
  call = _Call("quantile", x, axis, backend, epsilon, options)
  if call.n == 0:
    raise ValueError("quantile needs at least one value along axis; got x.shape[axis] = 0")
  out = call.run(q=levels)
  return jnp.squeeze(out, call.axis) if scalar else out


def topk(
  x: ArrayLike,
  k: int,
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft top-k values: a differentiable relaxation of :func:`jax.lax.top_k`, in decreasing order.

  ``pav``: the first k entries of the decreasing soft sort. ``sinkhorn``: transport onto k + 1 targets, the
  k largest values and the rest (Cuturi et al., 2019), O(nk).

  Args:
    x: input array ``[..., n, ...]``.
    k: how many values to keep, an int in [1, n].
    axis: the axis to take the top k along (``jax.lax.top_k`` only takes the last).
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` (the default), ``"sinkhorn"``, or a backend object.
    **options: with a backend name, its options.

  Returns:
    ``x``'s shape with ``axis`` of size ``k``, the largest value first.

  Example:
    >>> import otsort
    >>> otsort.topk([1.0, 5.0, 2.0, 4.0], 2, epsilon=1e-3)
    Array([5., 4.], dtype=float32)
  """
  call = _Call("topk", x, axis, backend, epsilon, options)
  return call.run(k=call.check_k(k))


def topk_mask(
  x: ArrayLike,
  k: int,
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft top-k mask: a differentiable relaxation of the 0/1 indicator of the k largest entries.

  ``pav``: the projection of :math:`x / \varepsilon` onto the permutahedron of :math:`(1, \dots, 1, 0, \dots,
  0)` with k ones (Sander et al., "Fast, Differentiable and Sparse Top-k", ICML 2023); with L2 it is sparse,
  exactly 0 or 1 away from the k-th value. ``sinkhorn``: transport onto two targets holding mass
  :math:`(n - k) / n` and :math:`k / n` (Cuturi et al., 2019).

  Args:
    x: input array ``[..., n, ...]``.
    k: the number of entries to select, an int in [1, n].
    axis: the axis to select along.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"`` (the default), ``"sinkhorn"``, or a backend object.
    **options: with a backend name, its options.

  Returns:
    An array of ``x``'s shape, values in [0, 1] summing to k along ``axis``.

  Example:
    >>> import otsort
    >>> otsort.topk_mask([1.0, 5.0, 2.0, 4.0], 2, epsilon=1e-3)
    Array([0., 1., 0., 1.], dtype=float32)
  """
  call = _Call("topk_mask", x, axis, backend, epsilon, options)
  return call.run(k=call.check_k(k))


def quantize(
  x: ArrayLike,
  num_levels: int,
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "sinkhorn",
  **options: Any,
) -> jax.Array:
  r"""Soft quantization onto ``num_levels`` levels (``sinkhorn`` backend only, as ``ott.tools.soft_sort``).

  Each row is transported onto ``num_levels`` uniform targets; each input is then replaced by the average
  level it is sent to. As :math:`\varepsilon \to 0` every value is replaced by the mean of its quantile bin.

  Args:
    x: input array ``[..., n, ...]``.
    num_levels: the number of levels, an int >= 2 (a Python or NumPy integer, or a concrete 0-d integer array;
      it fixes the number of targets, so it cannot be traced).
    axis: the axis to quantize along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"`` or an :class:`otsort.Sinkhorn` (the ``pav`` backend has no transport plan: a
      ``ValueError``).
    **options: with ``"sinkhorn"``, its options (:class:`otsort.Sinkhorn`; target options are refused).

  Returns:
    An array of the shape of ``x``.

  Example:
    >>> import otsort
    >>> otsort.quantize([1.0, 1.2, 5.0, 5.2], 2, epsilon=1e-3).round(2)
    Array([1.1, 1.1, 5.1, 5.1], dtype=float32)

  References:
    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019.
  """
  call = _Call("quantize", x, axis, backend, epsilon, options)
  return call.run(num_levels=_checks.check_int("num_levels", num_levels, low=2))


def sort_with(
  x: ArrayLike,
  values: ArrayLike,
  *,
  topk: int | None = None,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "sinkhorn",
  **options: Any,
) -> jax.Array:
  r"""Soft-sorts ``values`` by the criterion ``x`` (``sinkhorn`` backend only), like ``values[argsort(x)]``.

  Each output is the average of the ``values`` sent to one target of the transport of ``x``.

  Args:
    x: the criterion ``[..., n, ...]``.
    values: real, ``x.shape`` followed by any feature dimensions ``[..., n, ..., *features]``; sorted along
      ``axis`` (complex values are refused with a ``TypeError``: the transport plan is real).
    topk: ``None`` sorts all values in increasing order of ``x``; an int ``k`` in [1, n] keeps the values of the
      ``k`` largest criteria, in decreasing order like :func:`topk`.
    axis: the axis of ``x`` (and ``values``) to sort along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"`` or an :class:`otsort.Sinkhorn`.
    **options: with ``"sinkhorn"``, its options; ``target``, ``num_targets`` or ``target_weights`` (also with a
      backend object) choose the target measure when ``topk`` is ``None``.

  Returns:
    ``values`` with ``axis`` of size n (or ``k``, or the number of targets).

  Example:
    >>> import numpy as np, otsort
    >>> otsort.sort_with([3.0, 1.0, 2.0], [30.0, 10.0, 20.0], epsilon=1e-3).round(1)
    Array([10., 20., 30.], dtype=float32)
  """
  call = _Call("sort_with", x, axis, backend, epsilon, options)
  values = _checks.as_array("values", values)
  _checks.check_real_dtype("values", values.dtype)
  values = values.astype(call.compute_dtype)
  if values.shape[: len(call.shape)] != call.shape:
    raise ValueError(
      f"values must have x's shape {call.shape} followed by feature dimensions; got values.shape = {values.shape}"
    )
  if topk is not None:
    topk = call.check_k(topk, "topk")
  moved = jnp.moveaxis(values, call.axis, call.x.ndim - 1)
  return call.run(aligned=(moved,), topk=topk)


def quantile_normalization(
  x: ArrayLike,
  targets: ArrayLike,
  *,
  weights: ArrayLike | None = None,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "sinkhorn",
  **options: Any,
) -> jax.Array:
  r"""Soft quantile normalization (``sinkhorn`` backend only): gives each row the distribution of ``targets``
  while keeping its order.

  Args:
    x: input array ``[..., n, ...]``.
    targets: ``[m]`` real values, ``m >= 2``, finite and sorted increasingly (non-decreasing), that the rows are
      mapped onto. A concrete ``targets`` (a list or a NumPy array, also inside ``jit``) is checked; a traced
      one (an argument of ``jit`` or ``grad``) can only be checked for its shape: unsorted or non-finite traced
      targets give a result that does not keep the order of the rows, or NaN.
    weights: ``None`` (uniform) or ``[m]`` positive, finite weights summing to 1 (concrete values).
    axis: the axis to normalize along.
    epsilon: entropic regularization, > 0; ``None`` for the default 1e-2.
    backend: ``"sinkhorn"`` or an :class:`otsort.Sinkhorn`.
    **options: with ``"sinkhorn"``, its options (solver settings).

  Returns:
    An array of the shape of ``x``.

  Example:
    >>> import otsort
    >>> otsort.quantile_normalization([0.3, 0.1, 0.2], [0.0, 5.0, 10.0], epsilon=1e-3).round(1)
    Array([10.,  0.,  5.], dtype=float32)

  References:
    Cuturi, Teboul, Niles-Weed, Vert, "Supervised Quantile Normalization for Low-rank Matrix Approximation",
    ICML 2020.
  """
  call = _Call("quantile_normalization", x, axis, backend, epsilon, options)
  targets = _checks.check_sorted_values("targets", targets, call.compute_dtype)
  if weights is not None:
    weights = _checks.check_weights("weights", weights, length=targets.shape[0])
  return call.run(shared=(targets,), weights=weights)
