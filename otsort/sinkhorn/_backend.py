r"""The Sinkhorn backend: soft sorting operators on rows, via entropic OT.

Every function takes a contiguous ``[batch, n]`` array of rows (the front end
moves the axis last and flattens the batch) and a validated
:class:`SinkhornOptions`; it transports each row of (squashed) inputs onto a
target measure with ott-jax's Sinkhorn solver and reads the result off the
coupling. Defaults reproduce ``ott.tools.soft_sort`` within the solver
threshold, but with gradients that work in float32 (see ``_transport.py``).

``epsilon`` is data, not configuration: every operator takes it as a
``[batch]`` array, one value per row, in the dtype of ``x`` (a Python float
or a 0-d array is shared by all rows). It may be traced: changing it under
``jax.jit`` does not recompile, it can be ``vmap``-ed over, and every
operator is differentiable with respect to it, for both differentiation
modes. The front end checks that it is positive and finite.

Forward-mode differentiation (``jax.jvp``/``jacfwd``) is not supported: both
ott-jax's implicit and unrolled loops are ``custom_vjp`` functions. Use
reverse mode (``jax.grad``, ``jax.vjp``, ``jacrev``).

References:
  Cuturi, Teboul, Vert, `Differentiable Ranks and Sorting using Optimal
  Transport <https://arxiv.org/abs/1905.11885>`_, NeurIPS 2019.

  Cuturi, Teboul, Niles-Weed, Vert, `Supervised Quantile Normalization for
  Low-rank Matrix Approximation <https://arxiv.org/abs/2002.03229>`_,
  ICML 2020.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from otsort import _checks
from otsort.sinkhorn import _readouts
from otsort.sinkhorn import _targets
from otsort.sinkhorn import _transport
from otsort.sinkhorn._targets import TargetMeasure

__all__ = [
    "DEFAULT_EPSILON", "SinkhornOptions", "parse_options", "sort", "ranks",
    "quantile", "topk", "topk_mask", "quantize", "sort_with",
    "quantile_normalization",
]

#: Entropic regularisation used by ``ott.tools.soft_sort`` (absolute, on the
#: squared distance between squashed inputs in (0, 1) and targets in [0, 1]).
DEFAULT_EPSILON: float = 1e-2

_SQUASHINGS = ("sigmoid", "none")
_DIFFERENTIATIONS = ("implicit", "unroll")
_INITIALIZERS = ("monotone", "zeros")


@dataclasses.dataclass(frozen=True)
class SinkhornOptions:
  r"""Validated, hashable options of the Sinkhorn backend.

  Build it with :func:`parse_options`; every field is keyword-only there.

  Attributes:
    squashing: how a row ``[n]`` is mapped next to the targets before the
      transport. ``"sigmoid"`` (default, as ott-jax):
      :math:`\sigma((x - \bar x)/(s_x + 10^{-10}))`, scale-invariant, into
      :math:`(0, 1)`; ``"none"``: the raw values (then choose targets on their
      scale); or a callable ``[n] -> [n]``, increasing, JAX-traceable.
    target: a :class:`TargetMeasure` for ``sort``, ``ranks`` and
      ``sort_with`` (without top-k). Default ``None``: ``num_targets``
      equispaced targets on :math:`[0, 1]`.
    num_targets: ``m >= 2`` targets for ``sort``/``ranks``/``sort_with``;
      ``None`` (default) means ``n``, or ``len(target_weights)``. ``sort``
      then returns ``m`` values per row.
    target_weights: ``[m]`` positive weights summing to 1 for those targets
      (concrete values; checked here). Default ``None``: uniform.
    threshold: Sinkhorn stops when the L1 error on the target marginal is
      below it. Default ``1e-3`` (ott-jax's); reachable in float32.
    min_iterations: minimum Sinkhorn iterations (default 0).
    max_iterations: maximum Sinkhorn iterations (default 2000, ott-jax's).
    differentiation: ``"implicit"`` (default): implicit function theorem at
      the solution, memory :math:`O(nm)`, cost of a few dozen iterations;
      ``"unroll"``: backpropagate through the iterations (ott-jax
      checkpoints them), exact derivative of what was computed even if not
      converged, several times slower.
    initializer: ``"monotone"`` (default): closed-form dual potentials of
      the unregularised 1-D problem, :math:`O(nm)`; not differentiated with
      ``"implicit"`` (the converged plan does not depend on the start),
      differentiated with ``"unroll"`` (the iterates do);
      ``"zeros"``: ott-jax's default (zero potentials).
  """

  squashing: Union[str, Callable[[jax.Array], jax.Array]] = "sigmoid"
  target: Optional[TargetMeasure] = None
  num_targets: Optional[int] = None
  target_weights: Optional[tuple[float, ...]] = None
  threshold: float = 1e-3
  min_iterations: int = 0
  max_iterations: int = 2000
  differentiation: str = "implicit"
  initializer: str = "monotone"

  def solver_kwargs(self) -> dict[str, Any]:
    return dict(threshold=self.threshold, min_iterations=self.min_iterations,
                max_iterations=self.max_iterations,
                differentiation=self.differentiation,
                initializer=self.initializer)

  @property
  def has_custom_target(self) -> bool:
    return (self.target is not None or self.num_targets is not None or
            self.target_weights is not None)



def parse_options(options: dict) -> SinkhornOptions:
  """Validates backend options (at trace time) into :class:`SinkhornOptions`.

  Args:
    options: a mapping from option names (see :class:`SinkhornOptions`) to
      values; missing names take their defaults.

  Returns:
    A frozen, hashable :class:`SinkhornOptions`.

  Raises:
    ValueError: for an unknown name (the message lists the allowed ones), or a
      value out of range (the message names the option, the value and what is
      allowed).

  Example:
    >>> opts = parse_options({"differentiation": "unroll", "threshold": 1e-4})
  """
  _checks.check_option_names("sinkhorn", options, SinkhornOptions)
  o = dict(options)

  squashing = o.get("squashing", "sigmoid")
  if not (squashing in _SQUASHINGS if isinstance(squashing, str) else
          callable(squashing)):
    raise ValueError(
        f"squashing must be one of {list(_SQUASHINGS)} or a callable; got "
        f"{squashing!r}"
    )

  target = o.get("target")
  if target is not None and not isinstance(target, TargetMeasure):
    raise ValueError(
        f"target must be a TargetMeasure or None; got {type(target).__name__}"
    )
  num_targets = o.get("num_targets")
  if num_targets is not None:
    _check_int("num_targets", num_targets, low=2)
  target_weights = o.get("target_weights")
  if target is not None and (num_targets is not None or
                             target_weights is not None):
    raise ValueError(
        "give either target=TargetMeasure(...) or num_targets/target_weights,"
        " not both; got target and "
        f"num_targets={num_targets!r}, target_weights={target_weights!r}"
    )
  if target_weights is not None:
    target_weights = _targets.check_weights(
        target_weights, name="target_weights", length=num_targets
    )
    if len(target_weights) < 2:
      raise ValueError(
          f"target_weights needs at least 2 entries; got {list(target_weights)}"
      )

  threshold = o.get("threshold", 1e-3)
  if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
      or not math.isfinite(threshold) or threshold <= 0):
    raise ValueError(
        f"threshold must be a positive finite float; got {threshold!r}"
    )
  min_iterations = o.get("min_iterations", 0)
  _check_int("min_iterations", min_iterations, low=0)
  max_iterations = o.get("max_iterations", 2000)
  _check_int("max_iterations", max_iterations, low=max(1, min_iterations),
             why=f"(at least min_iterations = {min_iterations})")
  differentiation = o.get("differentiation", "implicit")
  if differentiation not in _DIFFERENTIATIONS:
    raise ValueError(
        f"differentiation must be one of {list(_DIFFERENTIATIONS)}; got "
        f"{differentiation!r}"
    )
  initializer = o.get("initializer", "monotone")
  if initializer not in _INITIALIZERS:
    raise ValueError(
        f"initializer must be one of {list(_INITIALIZERS)}; got "
        f"{initializer!r}"
    )
  return SinkhornOptions(
      squashing=squashing, target=target, num_targets=num_targets,
      target_weights=target_weights, threshold=float(threshold),
      min_iterations=int(min_iterations), max_iterations=int(max_iterations),
      differentiation=differentiation, initializer=initializer,
  )


def _check_int(name, value, *, low, why=""):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an int; got {value!r}")
  if value < low:
    raise ValueError(
        f"{name} must be >= {low}{' ' + why if why else ''}; got {value}"
    )


# ----------------------------------------------------------------------------
# Helpers


def _sort_target(n: int, options: SinkhornOptions) -> TargetMeasure:
  """The measure for sort/ranks: the user's, or ``m`` uniform targets."""
  if options.target is not None:
    return options.target
  if options.target_weights is not None:
    return TargetMeasure.uniform(len(options.target_weights),
                                 options.target_weights)
  return TargetMeasure.uniform(options.num_targets or n)


def reject_custom_target(options: SinkhornOptions, op: str) -> None:
  if options.has_custom_target:
    raise ValueError(
        f"{op} builds its own target measure; the options target, "
        "num_targets and target_weights only apply to sort, ranks and "
        f"sort_with(topk=None); got target={options.target!r}, "
        f"num_targets={options.num_targets!r}, "
        f"target_weights={options.target_weights!r}"
    )


def _row_transport(x_row, measure: TargetMeasure, epsilon: jax.Array,
                   options: SinkhornOptions) -> _transport.Transport:
  z = _transport.squash(x_row, options.squashing)
  return _transport.transport(z, measure.locations, measure.weights,
                              epsilon=epsilon, **options.solver_kwargs())


@jax.custom_vjp
def _to_unit(x, root):
  """``x / root**2``, differentiated as the identity; pairs with :func:`_from_unit`."""
  return x / root / root  # Two steps: 1 / root**2 may be subnormal, flushed.


def _to_unit_fwd(x, root):
  return _to_unit(x, root), root


def _to_unit_bwd(root, g):
  return g, jnp.zeros_like(root)


_to_unit.defvjp(_to_unit_fwd, _to_unit_bwd)


@jax.custom_vjp
def _from_unit(y, root):
  """``y * root**2``, differentiated as the identity; pairs with :func:`_to_unit`."""
  return y * root * root


_from_unit.defvjp(lambda y, root: (_from_unit(y, root), root), _to_unit_bwd)


@jax.custom_vjp
def _scaled_cotangent(e, root):
  """``e`` itself, whose cotangent is multiplied by ``root**2``: the other
  arguments of a readout wrapped by :func:`_scale_free` (epsilon)."""
  return e


_scaled_cotangent.defvjp(
    lambda e, root: (e, root),
    lambda root, g: (g * root * root, jnp.zeros_like(root)))


def _scale_free(readout, options: SinkhornOptions):
  r"""``readout(x)`` computed as :math:`s\,\text{readout}(x / s)`, :math:`s \approx \max |x|`
  (a power of two, :func:`~otsort.sinkhorn._transport.scale_root`).

  With the sigmoid squashing (scale-invariant) the sort-like readouts are
  positively homogeneous, so this is the same function, and its derivative
  is the readout's at :math:`x / s`: the scale cancels and is never formed.
  Computed directly, the derivative's intermediate terms (the cotangent of
  the plan, :math:`(x_i - \text{out}_j) / c_j`) overflow for float32 rows
  near 3e38 and the gradient is NaN.
  """
  if not (isinstance(options.squashing, str) and options.squashing == "sigmoid"):
    return readout

  def scaled(xr, *rest):
    root = _transport.scale_root(xr)
    rest = tuple(_scaled_cotangent(r, root) for r in rest)
    return _from_unit(readout(_to_unit(xr, root), *rest), root)

  return scaled


def _map_rows(fn, *args):
  """Applies ``fn`` to each row (leading axis) of every argument."""
  return jax.vmap(fn)(*args)


def _check_rows(x, name="x"):
  if x.ndim != 2:
    raise ValueError(f"{name} must be [batch, n]; got shape {x.shape}")


def _row_epsilons(epsilon: ArrayLike, x: jax.Array) -> jax.Array:
  """``epsilon`` as ``[batch]`` in ``x``'s dtype; a scalar is shared."""
  eps = jnp.asarray(epsilon, dtype=x.dtype)
  if eps.ndim == 0:
    return jnp.broadcast_to(eps, x.shape[:1])
  if eps.shape != x.shape[:1]:
    raise ValueError(
        f"epsilon must be a scalar or [batch] = [{x.shape[0]}] (one value per"
        f" row of x); got shape {eps.shape}"
    )
  return eps


# ----------------------------------------------------------------------------
# Operators


def sort(x: jax.Array, *, descending: bool, epsilon: ArrayLike,
         options: SinkhornOptions) -> jax.Array:
  r"""Soft sort of each row, the entropic counterpart of ``jnp.sort``.

  .. math::

    \text{sort}_\varepsilon(x)_j = \frac{(P^{\varepsilon\top} x)_j}{c_j},

  where :math:`P^\varepsilon` is the entropic coupling from the squashed
  inputs (mass :math:`1/n` each) to the targets (``linspace(0, 1, m)``,
  uniform mass by default). As :math:`\varepsilon \to 0` this tends to
  ``jnp.sort(x)``.

  Args:
    x: ``[batch, n]`` float32 or float64 rows.
    descending: reverse the output (largest first).
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: see :class:`SinkhornOptions`; ``target``, ``num_targets`` and
      ``target_weights`` apply.

  Returns:
    ``[batch, m]`` soft sorted values, ``m = n`` unless the options change
    the target measure.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  n = x.shape[1]
  if n == 1 and not options.has_custom_target:
    return x
  measure = _sort_target(n, options)

  def row(xr, er):
    return _readouts.sort(_row_transport(xr, measure, er, options), xr)

  out = _map_rows(_scale_free(row, options), x, eps)
  return out[:, ::-1] if descending else out


def ranks(x: jax.Array, *, descending: bool, epsilon: ArrayLike,
          options: SinkhornOptions) -> jax.Array:
  r"""Soft ranks of each row, 0-based, like ``argsort(argsort(x))``.

  .. math::

    \text{ranks}_\varepsilon(x)_i = (n - 1)\,\frac{(P^\varepsilon t)_i}{r_i},
    \qquad t = \text{target locations rescaled to } [0, 1].

  Args:
    x: ``[batch, n]`` rows.
    descending: the largest value gets rank 0.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: see :class:`SinkhornOptions`; target options apply.

  Returns:
    ``[batch, n]`` soft ranks in :math:`[0, n - 1]`.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  n = x.shape[1]
  if n == 1:
    return jnp.zeros_like(x)
  measure = _sort_target(n, options)

  def row(xr, er):
    tr = _row_transport(xr, measure, er, options)
    return _readouts.ranks(tr, measure.locations)

  out = _map_rows(row, x, eps)
  return (n - 1) - out if descending else out


def quantile(x: jax.Array, q: tuple[float, ...], *, epsilon: ArrayLike,
             options: SinkhornOptions) -> jax.Array:
  r"""Soft quantiles of each row, the counterpart of ``jnp.quantile``.

  Transports onto :math:`2\lvert q\rvert + 1` targets where a small target of
  mass :math:`w` sits at cumulative mass :math:`q_i` (see
  :func:`otsort.sinkhorn._targets.quantile_targets`), and reads the average
  of the inputs sent to it. Levels may be repeated, unsorted, or 0 and 1.

  Args:
    x: ``[batch, n]`` rows.
    q: levels in :math:`[0, 1]`.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options must be left unset.

  Returns:
    ``[batch, len(q)]``.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  reject_custom_target(options, "quantile")
  q = tuple(float(v) for v in q)
  n = x.shape[1]
  if n == 1:
    return jnp.repeat(x, len(q), axis=1)
  measure, index = _targets.quantile_targets(q, n)
  index = np.asarray(index)

  def row(xr, er):
    tr = _row_transport(xr, measure, er, options)
    return _readouts.sort(tr, xr)[index]

  return _map_rows(_scale_free(row, options), x, eps)


def topk(x: jax.Array, k: int, *, epsilon: ArrayLike,
         options: SinkhornOptions) -> jax.Array:
  r"""Soft top-:math:`k` values, largest first, like ``jax.lax.top_k(x, k)[0]``.

  Transports onto :math:`k + 1` targets (one of mass :math:`(n - k)/n` for the
  rest, ``k`` of mass :math:`1/n`), which costs :math:`O(nk)` per iteration
  instead of :math:`O(n^2)`. This is ``ott.tools.soft_sort.sort(x,
  topk=k)`` reversed (ott-jax returns them ascending). ``k = n`` is the full
  descending soft sort.

  Args:
    x: ``[batch, n]`` rows.
    k: ``1 <= k <= n`` (checked by the front end).
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options must be left unset.

  Returns:
    ``[batch, k]``, descending.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  reject_custom_target(options, "topk")
  n = x.shape[1]
  if k >= n:
    return sort(x, descending=True, epsilon=eps, options=options)
  measure = TargetMeasure.topk(n, k)

  def row(xr, er):
    tr = _row_transport(xr, measure, er, options)
    return _readouts.sort(tr, xr)[1:]

  return _map_rows(_scale_free(row, options), x, eps)[:, ::-1]


def topk_mask(x: jax.Array, k: int, *, epsilon: ArrayLike,
              options: SinkhornOptions) -> jax.Array:
  r"""Soft top-:math:`k` mask, the counterpart of ``x >= sort(x)[-k]``.

  Transports onto two targets of mass :math:`1 - k/n` and :math:`k/n`; the
  mask of input :math:`i` is the share of its mass sent to the upper target,

  .. math::

    \text{mask}_i = P_{i2} / r_i \in [0, 1], \qquad \sum_i \text{mask}_i
    \approx k.

  Args:
    x: ``[batch, n]`` rows.
    k: ``1 <= k <= n``; ``k = n`` gives ones.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options must be left unset.

  Returns:
    ``[batch, n]`` with values in :math:`[0, 1]`, rows summing to about
    ``k`` (within the solver threshold times ``n``).
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  reject_custom_target(options, "topk_mask")
  n = x.shape[1]
  if k >= n:
    return jnp.ones_like(x)
  measure = TargetMeasure.topk_mask(n, k)

  def row(xr, er):
    tr = _row_transport(xr, measure, er, options)
    return tr.plan[:, 1] / tr.row_sums

  return _map_rows(row, x, eps)


def quantize(x: jax.Array, num_levels: int, *, epsilon: ArrayLike,
             options: SinkhornOptions) -> jax.Array:
  r"""Soft quantization of each row onto ``num_levels`` soft levels.

  Each row is soft-sorted onto ``num_levels`` uniform targets, giving levels
  :math:`\ell_j = (P^\top x)_j / c_j`, and each input is replaced by its
  soft level :math:`(P\ell)_i / r_i` (ott-jax's ``quantize``).

  Args:
    x: ``[batch, n]`` rows.
    num_levels: an int ``>= 2``.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options must be left unset.

  Returns:
    ``[batch, n]``.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  reject_custom_target(options, "quantize")
  _check_int("num_levels", num_levels, low=2)
  if x.shape[1] == 1:
    return x
  measure = TargetMeasure.uniform(num_levels)

  def row(xr, er):
    return _readouts.quantize(_row_transport(xr, measure, er, options), xr)

  return _map_rows(_scale_free(row, options), x, eps)


def sort_with(x: jax.Array, other: jax.Array, topk: Optional[int], *,
              epsilon: ArrayLike, options: SinkhornOptions) -> jax.Array:
  r"""Soft-sorts the vectors ``other`` by the criterion ``x``.

  Each output vector is the average of the ``other`` vectors sent to one
  target, :math:`(P^\top V)_j / c_j`, like ``other[argsort(x)]``.

  Args:
    x: ``[batch, n]`` criterion rows.
    other: ``[batch, n, d]`` vectors to sort along with ``x``.
    topk: ``None``: all targets, ascending in ``x`` (``[batch, m, d]``,
      ``m = n`` unless target options say otherwise). An int ``k``: the
      vectors of the ``k`` largest criteria, **descending** like
      :func:`topk` (ott-jax returns them ascending); ``k = n`` is the full
      descending sort.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options apply only when ``topk`` is ``None``.

  Returns:
    ``[batch, m, d]`` (ascending) or ``[batch, k, d]`` (descending).
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  if other.ndim != 3 or other.shape[:2] != x.shape:
    raise ValueError(
        f"other must be [batch, n, d] = [{x.shape[0]}, {x.shape[1]}, d]; got "
        f"shape {other.shape}"
    )
  n = x.shape[1]
  if n == 1 and not (topk is None and options.has_custom_target):
    return other
  if topk is None:
    measure, start, descending = _sort_target(n, options), 0, False
  else:
    reject_custom_target(options, "sort_with(topk=k)")
    if topk >= n:
      measure, start = TargetMeasure.uniform(n), 0
    else:
      measure, start = TargetMeasure.topk(n, topk), 1
    descending = True

  def row(xr, vr, er):
    tr = _row_transport(xr, measure, er, options)
    return _readouts.column_means(tr, vr)[start:]

  out = _map_rows(row, x, other, eps)
  return out[:, ::-1] if descending else out


def quantile_normalization(x: jax.Array, targets: jax.Array,
                           weights: Optional[Any] = None, *,
                           epsilon: ArrayLike,
                           options: SinkhornOptions) -> jax.Array:
  r"""Soft quantile normalization: give each row the distribution ``targets``.

  Transports each row onto ``m`` targets (``linspace(0, 1, m)``, masses
  ``weights``) and replaces input :math:`i` by :math:`(P\,\text{targets})_i /
  r_i`, which preserves the order of the row (ott-jax's
  ``quantile_normalization``).

  Args:
    x: ``[batch, n]`` rows.
    targets: ``[m]`` (shared) or ``[batch, m]`` values, sorted ascending.
    weights: ``None`` (uniform) or concrete ``[m]`` positive weights summing
      to 1.
    epsilon: ``[batch]`` positive entropic regularisation, one per row,
      or a scalar for all rows.
    options: target options must be left unset.

  Returns:
    ``[batch, n]``.
  """
  _check_rows(x)
  eps = _row_epsilons(epsilon, x)
  reject_custom_target(options, "quantile_normalization")
  targets = jnp.asarray(targets, dtype=x.dtype)
  if targets.ndim == 1:
    targets = jnp.broadcast_to(targets, (x.shape[0], targets.shape[0]))
  if targets.ndim != 2 or targets.shape[0] != x.shape[0]:
    raise ValueError(
        f"targets must be [m] or [batch, m] with batch = {x.shape[0]}; got "
        f"shape {targets.shape}"
    )
  m = targets.shape[1]
  if m < 2:
    raise ValueError(f"targets needs at least 2 values; got m = {m}")
  if weights is None:
    measure = TargetMeasure.uniform(m)
  else:
    measure = TargetMeasure.uniform(
        m, _targets.check_weights(weights, name="weights", length=m)
    )

  def row(xr, tr_values, er):
    tr = _row_transport(xr, measure, er, options)
    return _readouts.row_means(tr, tr_values)

  return _map_rows(row, x, targets, eps)
