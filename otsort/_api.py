"""The public soft operations, in front of both backends.

Every function works along one ``axis`` of an array of any shape. This module does, once for all operations
and backends: argument checks (at trace time, so they also fire under ``jit``), dtype promotion, moving
``axis`` last and flattening the other dimensions into rows, then dispatch to the backend, which only ever
sees rows ``[batch, n]``.

Dtypes: float32 and float64 are computed as they are; float16 and bfloat16 are computed in float32 and returned
in their own dtype; integers and booleans are promoted to JAX's default float dtype.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from otsort import _checks
from otsort.pav import _backend as _pav

BACKENDS = ("pav",)


def _backend_module(backend: Any) -> types.ModuleType:
  _checks.check_choice("backend", backend, BACKENDS)
  return {"pav": _pav}[backend]


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


class _Call:
  """One call's validated arguments: the rows, and how to put results back in the caller's shape."""

  def __init__(self, x: ArrayLike, axis: Any, backend: Any, epsilon: Any, options: dict):
    self.module = _backend_module(backend)
    self.options = self.module.parse_options(options)
    self.epsilon = (self.module.DEFAULT_EPSILON if epsilon is None else _checks.positive_finite("epsilon", epsilon))
    x = jnp.asarray(x)
    if x.ndim == 0:
      raise ValueError("x must have at least one dimension to sort along; got a scalar")
    self.axis = _checks.normalize_axis(axis, x.ndim)
    self.compute_dtype, self.out_dtype = _float_dtypes(x.dtype)
    moved = jnp.moveaxis(x.astype(self.compute_dtype), self.axis, -1)
    self.batch_shape = moved.shape[:-1]
    self.n = moved.shape[-1]
    self.rows = moved.reshape(-1, self.n)

  def empty(self) -> bool:
    return self.rows.size == 0

  def restore(self, rows: jax.Array) -> jax.Array:
    """Rows ``[batch, m]`` back to the caller's layout, with ``m`` values along ``axis``."""
    out = rows.reshape(*self.batch_shape, rows.shape[-1]).astype(self.out_dtype)
    return jnp.moveaxis(out, -1, self.axis)

  def run(self, op: Callable[..., jax.Array], **kwargs) -> jax.Array:
    if self.empty():
      return self.restore(self.rows)
    return self.restore(op(self.rows, epsilon=self.epsilon, options=self.options, **kwargs))


def sort(x: ArrayLike, *, axis: int = -1, descending: bool = False, epsilon: float | None = None,
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
  return call.run(call.module.sort, descending=bool(descending))


def ranks(x: ArrayLike, *, axis: int = -1, descending: bool = False, epsilon: float | None = None,
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
  return call.run(call.module.ranks, descending=bool(descending))
