r"""The ``sinkhorn`` backend object: soft operations as entropic optimal transport onto a target measure (ott-jax).

Every operation is a pair (target measure, readout) over one row solve, :meth:`Sinkhorn._solve`: each row of
(squashed) inputs ``[n]``, mass :math:`1/n` each, is transported onto the measure (:mod:`._targets`) by ott-jax's
Sinkhorn solver (:mod:`._transport`) and the result is read off the plan (:mod:`._readouts`). Rows come as
``[batch, n]`` with one epsilon per row ``[batch]``; the front end moves the axis and checks the arguments.

``epsilon`` is data, not configuration: it may be traced (``jit`` does not recompile when it changes, ``vmap``
over it works) and every operation is differentiable with respect to it. Reverse mode only (``grad``, ``vjp``,
``jacrev``): ott-jax's implicit and unrolled loops are ``custom_vjp`` functions.

References:
  Cuturi, Teboul, Vert, `Differentiable Ranks and Sorting using Optimal Transport
  <https://arxiv.org/abs/1905.11885>`_, NeurIPS 2019.

  Cuturi, Teboul, Niles-Weed, Vert, `Supervised Quantile Normalization for Low-rank Matrix Approximation
  <https://arxiv.org/abs/2002.03229>`_, ICML 2020.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from otsort import _checks
from otsort import _contract
from otsort.sinkhorn import _readouts
from otsort.sinkhorn import _scaling
from otsort.sinkhorn import _targets
from otsort.sinkhorn import _transport
from otsort.sinkhorn._targets import TargetMeasure

SQUASHINGS = ("sigmoid", "none")
DIFFERENTIATIONS = ("implicit", "unroll")
INITIALIZERS = ("monotone", "zeros")
#: The operations whose target measure the caller may choose, and the options that choose it.
TARGET_OPTIONS = ("target", "num_targets", "target_weights")
_MAX_ITERATIONS = 2**31 - 1  # the solver's loop counter is an int32


@dataclasses.dataclass(frozen=True)
class Sinkhorn(_contract.Backend):
  r"""The ``sinkhorn`` backend: soft operations by entropic optimal transport (Cuturi et al., 2019; ott-jax).

  Pass it as ``backend=otsort.Sinkhorn(...)``; ``backend="sinkhorn"`` with the same keywords as ``**options`` is
  equivalent. Besides ``sort``, ``ranks``, ``quantile``, ``topk`` and ``topk_mask`` it has ``quantize``,
  ``sort_with`` and ``quantile_normalization``, which read the transport plan. The defaults agree with
  ``ott.tools.soft_sort`` within the solver threshold, with gradients that work in float32.

  The target measure of ``sort``, ``ranks`` and ``sort_with`` (without ``topk``) is an option of those
  operations, not of the backend: ``otsort.sort(x, backend=otsort.Sinkhorn(), num_targets=5)``, with
  ``target=otsort.TargetMeasure(locations, weights)``, or ``num_targets`` (``m >= 2``; default ``n``) and
  ``target_weights`` (``[m]`` positive weights summing to 1; default uniform). ``sort`` then returns ``m`` values.
  The other operations build their own measure and refuse these options.

  Args:
    squashing: how a row is mapped next to the targets before the transport. ``"sigmoid"`` (default, as ott-jax):
      :math:`\sigma((x - \bar x) / (s_x + 10^{-10}))`, scale-invariant, into :math:`(0, 1)`; ``"none"``: the raw
      values (then choose targets on their scale); or a callable ``[n] -> [n]``, increasing, JAX-traceable.
    threshold: the solver stops when the L1 error on the target marginal is below it, a positive number. Default
      1e-3 (ott-jax's); reachable in float32.
    min_iterations: minimum number of Sinkhorn iterations, an int >= 0 (default 0).
    max_iterations: maximum number of Sinkhorn iterations, an int in ``[max(1, min_iterations), 2**31 - 1]``
      (default 2000, ott-jax's).
    differentiation: ``"implicit"`` (default): the implicit function theorem at the solution, memory
      :math:`O(nm)`; ``"unroll"``: backpropagate through the iterations, the exact derivative of what was
      computed even if not converged, several times slower.
    initializer: ``"monotone"`` (default): closed-form dual potentials of the unregularised 1-D problem,
      :math:`O(nm)`; ``"zeros"``: ott-jax's default (zero potentials).

  Example:
    >>> import otsort
    >>> otsort.Sinkhorn.default_epsilon
    0.01
    >>> backend = otsort.Sinkhorn(threshold=1e-6)
    >>> otsort.sort([3.0, 1.0, 2.0], epsilon=1e-3, backend=backend).round(2)
    Array([1., 2., 3.], dtype=float32)
  """

  squashing: str | Callable[[jax.Array], jax.Array] = "sigmoid"
  threshold: float = 1e-3
  min_iterations: int = 0
  max_iterations: int = 2000
  differentiation: str = "implicit"
  initializer: str = "monotone"

  name: ClassVar[str] = "sinkhorn"
  #: ott-jax's entropic regularisation (absolute, on the squared distance between squashed inputs in (0, 1) and
  #: targets in [0, 1]).
  default_epsilon: ClassVar[float] = 1e-2
  operations: ClassVar[frozenset[str]] = frozenset(
    {"sort", "ranks", "quantile", "topk", "topk_mask", "quantize", "sort_with", "quantile_normalization"}
  )
  operation_options: ClassVar[dict[str, tuple[str, ...]]] = {
    "sort": TARGET_OPTIONS,
    "ranks": TARGET_OPTIONS,
    "sort_with": TARGET_OPTIONS,
  }

  def __post_init__(self):
    if not callable(self.squashing):
      _checks.check_choice("squashing", self.squashing, SQUASHINGS)
    set_ = functools.partial(object.__setattr__, self)
    set_("threshold", _checks.check_real("threshold", self.threshold, positive=True))
    set_("min_iterations", _checks.check_int("min_iterations", self.min_iterations, low=0, high=_MAX_ITERATIONS))
    set_(
      "max_iterations",
      _checks.check_int(
        "max_iterations",
        self.max_iterations,
        low=max(1, self.min_iterations),
        high=_MAX_ITERATIONS,
        where="(at least min_iterations, at least 1)",
      ),
    )
    _checks.check_choice("differentiation", self.differentiation, DIFFERENTIATIONS)
    _checks.check_choice("initializer", self.initializer, INITIALIZERS)

  def operation_kwargs(self, op: str, options: dict[str, Any]) -> dict[str, Any]:
    """The target options of ``sort``, ``ranks`` and ``sort_with`` as one ``target`` (a :class:`TargetMeasure`,
    or ``None`` for ``n`` uniform targets)."""
    if op not in self.operation_options:
      return super().operation_kwargs(op, options)
    return {"target": target_measure(**options)}

  # -- the row solve ---------------------------------------------------------------------------------------------

  def _solve(
    self,
    x: jax.Array,
    epsilon: Any,
    measure: TargetMeasure,
    readout: Callable[..., jax.Array],
    *operands: jax.Array,
    scale_free: bool = False,
  ) -> jax.Array:
    """``readout(plan of row i onto measure, x[i], *operands[i])`` for every row: ``[batch, n]`` -> ``[batch, ...]``.

    ``scale_free`` marks a readout positively homogeneous in ``x`` (sort-like); with the sigmoid squashing it is
    then computed on the row scaled by a power of two (:mod:`._scaling`). A readout with one operand is linear in
    it, and computed on the operand scaled by a power of two.
    """
    epsilon = jnp.asarray(epsilon, x.dtype)
    if epsilon.ndim and epsilon.shape != x.shape[:1]:
      raise ValueError(
        f"epsilon must be a scalar or [batch] = [{x.shape[0]}] (one value per row of x); got shape {epsilon.shape}"
      )
    epsilon = jnp.broadcast_to(epsilon, x.shape[:1])
    solver = dict(
      threshold=self.threshold,
      min_iterations=self.min_iterations,
      max_iterations=self.max_iterations,
      differentiation=self.differentiation,
      initializer=self.initializer,
    )

    def row(xr, er, *rest):
      z = _transport.squash(xr, self.squashing)
      plan = _transport.transport(z, measure.locations, measure.weights, epsilon=er, **solver)
      return readout(plan, xr, *rest)

    if scale_free and not operands and self.squashing == "sigmoid":
      row = _scaling.scale_free(row)
    elif operands:
      row = _scaling.linear_in_operand(row)
    return jax.vmap(row)(x, epsilon, *operands)

  # -- the operations: [batch, n] rows, [batch] epsilons ---------------------------------------------------------

  def sort(self, x: jax.Array, *, descending: bool, epsilon: Any, target: TargetMeasure | None = None) -> jax.Array:
    r"""Soft sort, :math:`(P^\top x)_j / c_j`: ``[batch, n]`` -> ``[batch, m]`` (``m = n`` unless ``target``)."""
    n = x.shape[1]
    if target is None and n <= 1:
      return x
    out = self._solve(x, epsilon, target or TargetMeasure.uniform(n), _readouts.sort, scale_free=True)
    return out[:, ::-1] if descending else out

  def ranks(self, x: jax.Array, *, descending: bool, epsilon: Any, target: TargetMeasure | None = None) -> jax.Array:
    r"""Soft ranks in ``[0, n - 1]``, :math:`(n - 1) (P t)_i / r_i`: ``[batch, n]`` -> ``[batch, n]``."""
    n = x.shape[1]
    if n <= 1:
      return jnp.zeros_like(x)
    measure = target or TargetMeasure.uniform(n)
    out = self._solve(x, epsilon, measure, functools.partial(_readouts.ranks, locations=measure.locations))
    return (n - 1) - out if descending else out

  def quantile(self, x: jax.Array, q: tuple[float, ...], *, epsilon: Any) -> jax.Array:
    r"""Soft quantiles: the value at cumulative mass ``q`` (:func:`._targets.quantile_targets`, :math:`2|q| + 1`
    targets): ``[batch, n]`` -> ``[batch, len(q)]``."""
    n = x.shape[1]
    if n == 1:
      return jnp.repeat(x, len(q), axis=1)
    measure, index = _targets.quantile_targets(q, n)
    return self._solve(x, epsilon, measure, functools.partial(_readouts.sort_at, index=index), scale_free=True)

  def topk(self, x: jax.Array, k: int, *, epsilon: Any) -> jax.Array:
    """Soft top-k values, largest first, on ``k + 1`` targets (O(nk)): ``[batch, n]`` -> ``[batch, k]``."""
    n = x.shape[1]
    if k >= n:
      return self.sort(x, descending=True, epsilon=epsilon)
    index = tuple(range(k, 0, -1))  # the k one-input targets, largest first
    return self._solve(
      x, epsilon, TargetMeasure.topk(n, k), functools.partial(_readouts.sort_at, index=index), scale_free=True
    )

  def topk_mask(self, x: jax.Array, k: int, *, epsilon: Any) -> jax.Array:
    """Soft top-k mask on two targets of mass ``1 - k/n`` and ``k/n``: ``[batch, n]`` -> ``[batch, n]``."""
    n = x.shape[1]
    if k >= n:
      return jnp.ones_like(x)
    return self._solve(x, epsilon, TargetMeasure.topk_mask(n, k), _readouts.upper_share)

  def quantize(self, x: jax.Array, num_levels: int, *, epsilon: Any) -> jax.Array:
    """Each value replaced by its soft level among ``num_levels`` uniform targets: ``[batch, n]`` -> ``[batch, n]``."""
    if x.shape[1] <= 1:
      return x
    return self._solve(x, epsilon, TargetMeasure.uniform(num_levels), _readouts.quantize, scale_free=True)

  def sort_with(
    self, x: jax.Array, values: jax.Array, topk: int | None = None, *, epsilon: Any, target: TargetMeasure | None = None
  ) -> jax.Array:
    """``values [batch, n, *features]`` soft-sorted by ``x``: ``[batch, m, *features]`` ascending in ``x``
    (``m = n`` unless ``target``), or with ``topk = k`` the ``k`` largest, descending ``[batch, k, *features]``."""
    n = x.shape[1]
    if topk is not None and target is not None:
      raise ValueError(
        f"sort_with(topk=k) builds its own target measure; the options {', '.join(TARGET_OPTIONS)} "
        f"only apply to sort, ranks and sort_with(topk=None); got topk = {topk} and target = {target!r}"
      )
    if n <= 1 and target is None:
      return values
    flat = values.reshape(*values.shape[:2], -1)
    if topk is None:
      measure, start = target or TargetMeasure.uniform(n), 0
    elif topk >= n:
      measure, start = TargetMeasure.uniform(n), 0
    else:
      measure, start = TargetMeasure.topk(n, topk), 1
    out = self._solve(x, epsilon, measure, functools.partial(_readouts.sort_values, start=start), flat)
    out = out.reshape(*out.shape[:2], *values.shape[2:])
    return out if topk is None else out[:, ::-1]

  def quantile_normalization(
    self, x: jax.Array, targets: jax.Array, weights: tuple[float, ...] | None = None, *, epsilon: Any
  ) -> jax.Array:
    """Each row given the distribution of ``targets [m]`` (sorted; masses ``weights``, checked, or uniform),
    keeping its order: ``[batch, n]`` -> ``[batch, n]``."""
    m = targets.shape[-1]
    measure = TargetMeasure.uniform(m, weights)
    targets = jnp.broadcast_to(targets.astype(x.dtype), (x.shape[0], m))
    return self._solve(x, epsilon, measure, _readouts.normalize, targets)


def target_measure(target: Any = None, num_targets: Any = None, target_weights: Any = None) -> TargetMeasure | None:
  """The target measure chosen by the options ``target`` or ``num_targets`` / ``target_weights``; ``None`` for the
  default (``n`` uniform targets)."""
  if target is not None:
    if not isinstance(target, TargetMeasure):
      raise TypeError(f"target must be an otsort.TargetMeasure or None; got target = {_checks.show(target)}")
    if num_targets is not None or target_weights is not None:
      raise ValueError(
        f"give either target=TargetMeasure(...) or num_targets/target_weights, not both; got target "
        f"and num_targets={num_targets!r}, target_weights={_checks.show(target_weights)}"
      )
    return target
  if num_targets is not None:
    num_targets = _checks.check_int("num_targets", num_targets, low=2)
  if target_weights is not None:
    weights = _checks.check_weights("target_weights", target_weights, length=num_targets)
    if len(weights) < 2:
      raise ValueError(f"target_weights needs at least 2 entries; got target_weights = {list(weights)}")
    return TargetMeasure.uniform(len(weights), weights)
  return None if num_targets is None else TargetMeasure.uniform(num_targets)
