r"""Entropic transport of one row of inputs onto a target measure.

Geometry, problem and solver are kept apart, as in ott-jax: the inputs are
squashed to :math:`z \in (0, 1)^n`, a :class:`~ott.geometry.pointcloud.PointCloud`
with the squared Euclidean cost :math:`C_{ij} = (z_i - y_j)^2` is wrapped in a
balanced :class:`~ott.problems.linear.linear_problem.LinearProblem` with
marginals :math:`a = 1/n` and :math:`b`, and solved by ott-jax's
:class:`~ott.solvers.linear.sinkhorn.Sinkhorn` in the log domain. What leaves
this module is the plan-level quantity everything else needs, the coupling

.. math::

  P_{ij} = \exp\big((f_i + g_j - C_{ij}) / \varepsilon\big),

materialised as an ``[n, m]`` matrix (the solver already touches all
:math:`nm` entries per iteration, so this costs one more pass). Readouts are
then plain matrix products, which are NaN-free to differentiate; ott-jax's
``SinkhornOutput.apply`` uses a signed log-sum-exp whose derivative is NaN when
the applied vector has zeros (e.g. ``arange(m)``), which is one reason its
``topk_mask`` gradient is NaN.

Two choices differ from ott-jax's defaults, and make float32 gradients work:

* **Initializer.** ott-jax's ``SortingInitializer`` runs a ``while_loop``
  (not reverse-differentiable) on an :math:`n \times n` cost, and assumes the
  inputs already sorted. We instead compute, under ``stop_gradient``, the exact
  dual potentials of the *unregularised* 1-D problem, which in 1-D has a closed
  form: the optimal coupling is monotone, and for two consecutive targets
  :math:`y_j < y_{j+1}` sharing the source :math:`z^\ast` sitting at cumulative
  mass :math:`b_1 + \dots + b_j`, complementary slackness gives
  :math:`g_{j+1} - g_j = C(z^\ast, y_{j+1}) - C(z^\ast, y_j)`. A cumulative sum
  gives :math:`g`, a :math:`c`-transform gives :math:`f`; :math:`O(nm)`,
  no loop. It works for any weights and any :math:`m`.
* **Implicit differentiation.** ott-jax's default linear solve (lineax
  ``NormalCG`` at ``rtol = atol = 1e-6`` on the :math:`\varepsilon\log`
  preconditioned, non-symmetric system) squares the condition number of a
  *singular* system (potentials are defined up to :math:`(f + c, g - c)`), and
  in float32 fails to converge: lineax raises, or the result is NaN. Passing a
  custom solver is broken in ott-jax 0.6.0 (``ImplicitDiff.solve`` leaves
  ``solver`` unbound). ott-jax's pull-back through its first-order
  conditions also reads the :math:`nm` entries a dozen times. So the plan
  is a ``custom_vjp`` of :math:`(z, \varepsilon)` here
  (:func:`_implicit_plan_bwd`): a symmetric, gauge-fixed solve on one side
  (:func:`_adjoint_solve`), conjugate gradient with a preconditioner built
  for 1-D plans (:func:`_path_preconditioner`) above 256 unknowns, and the
  cotangents of :math:`z` and :math:`\varepsilon` in closed form. At
  :math:`n = m = 1000` in float32 ``ranks`` forward+backward costs 1.3x to
  1.7x its forward for :math:`\varepsilon` from :math:`10^{-2}` to
  :math:`10^{-5}` (ott-jax's pull-back with the unpreconditioned solve:
  4x at :math:`10^{-2}`, 8x to 18x at :math:`10^{-4}`).

With the monotone initializer the solver also runs in **kernel mode** on the
*reduced* cost :math:`\bar C_{ij} = C_{ij} - f^0_i - g^0_j`, where
:math:`(f^0, g^0)` are those closed-form duals. Kernel mode (matrix-vector
products with :math:`K = e^{-\bar C / \varepsilon}`) costs a multiply-add per
entry and iteration where the log domain costs an ``exp``, several times
less; on the raw cost it would underflow at small :math:`\varepsilon`. The
reduced cost is :math:`\ge 0` and vanishes on the unregularised optimal plan,
so every row and column of :math:`K` has an entry equal to 1 and the
Sinkhorn scalings :math:`u = e^{(f - f^0)/\varepsilon}`,
:math:`v = e^{(g - g^0)/\varepsilon}` only carry the entropic correction to
:math:`(f^0, g^0)`, which is :math:`O(\varepsilon \log n)` (see
:func:`monotone_dual_potentials` for the one case where this needs care).
Separable shifts of the cost leave the entropic plan unchanged, so the plan
and every readout are those of the original problem.

**Derivatives are those of the computed function.** How :math:`(f^0, g^0)`
enter the derivative depends on the differentiation mode:

* ``"implicit"`` differentiates the *converged* plan, which does not depend
  on the shift, so :math:`(f^0, g^0)` are computed under ``stop_gradient``
  (exact at convergence, and one less backward pass).
* ``"unroll"`` differentiates the iterates actually computed. Before
  convergence they *do* depend on the starting point: kernel mode on the
  reduced cost is log-domain Sinkhorn on :math:`C` started from
  :math:`(f^0, g^0)`. So the gradient flows through :math:`(f^0, g^0)`: the
  sort order and the ``searchsorted`` indices are piecewise constant (no
  gradient), the gathered source values, the cumulative sum and the
  :math:`c`-transform's ``min`` are differentiated. With ``stop_gradient``
  there, unrolled gradients at a loose threshold were off (float64,
  threshold ``1e-2``, :math:`\varepsilon = 0.01`, a directional derivative
  against central finite differences: 7.6% for ``sort`` with 20 targets, 76%
  for ``quantile`` with 12 inputs); they now agree to :math:`10^{-9}`. Where
  the reduced cost is 0 in exact arithmetic (the monotone support) its
  derivative is too, and it is taken as the constant 0 there: computed, it
  was rounding, which the kernel divides by :math:`\varepsilon`. The one
  exception are moves that split a tie group (:func:`_moves_within_ties`).

**Epsilon** is a scalar that may be traced, a leaf of the geometry: changing
it does not recompile, and it is differentiated. Unrolled, its derivative
goes through every iteration. Implicitly, it is one of the two arguments of
the plan's ``custom_vjp`` (checked against finite differences in
``tests/test_sinkhorn_epsilon.py`` and ``tests/test_sinkhorn_backward.py``).

Any finite epsilon is accepted: above :math:`\sqrt{\max}` of the dtype
(1.8e19 in float32) it is computed as that value, where the kernel is 1 to
rounding and the plan is the independent coupling :math:`a b^\top` (beyond
it the solver's :math:`\varepsilon \log u` overflows to NaN); below
:math:`\sqrt{\text{tiny}}` of the dtype (1.1e-19 in float32, 1.5e-154 in
float64) it is computed as that value, where the plan is already the hard
one and the implicit backward's :math:`1/\varepsilon^2` terms stay finite.
Small epsilons need no switch to the log domain: the reduced cost is exactly
:math:`\ge 0`, and exactly 0 on the support of the monotone coupling
(:func:`_reduced_cost`), so the kernel stays finite and keeps, down to the
smallest float, the 0/1 pattern of a coupling with the prescribed marginals:
the plan tends to the hard one. The implicit backward refines its linear
solve until its error is small relative to :math:`\varepsilon`
(:func:`_adjoint_error`), so that gradients at a small epsilon are those of
the hard plan too (float32 within about :math:`10^{-5}` of float64 from
:math:`10^{-4}` to :math:`10^{-12}`; one solve was off by O(1) at
:math:`10^{-8}`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
from ott.geometry import geometry
from ott.geometry import pointcloud
from ott.initializers.linear import initializers as ott_init
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

# ott's default squashing guards the z-score with this additive constant.
_STD_GUARD = 1e-10
# Up to this size, the implicit linear system is materialised and solved
# densely (exact, no iteration count to tune); above it, conjugate gradient.
_DENSE_SOLVE_MAX = 256
_CG_MAX_ITERATIONS = 500
# Relative residual of the CG solve: float32 reaches 1e-5; float64 is used to
# check gradients, so it solves to near the dense solve's accuracy.
_CG_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
# Iterative refinement of the adjoint solve (_adjoint_error): the residual
# it aims at, relative to the right-hand side and to epsilon, and at most
# this many passes after the first solve.
_REFINE_TOL = {np.dtype(np.float32): 1e-2, np.dtype(np.float64): 1e-7}
_REFINE_MAX_PASSES = {np.dtype(np.float32): 12, np.dtype(np.float64): 24}


def sigmoid_zscore(x: jax.Array) -> jax.Array:
  r"""ott-jax's default squashing, :math:`\sigma((x - \bar x) / (s + 10^{-10}))`.

  Same function as ott-jax, computed on :math:`x / \max_i |x_i|` (the same
  z-scores) so that rows near the largest float do not overflow (the
  :math:`10^{-10}` guard is then relative to the row's scale), and with a
  NaN-free gradient when all inputs tie:
  :math:`\sqrt{\cdot}` has an infinite derivative at 0, so ``jnp.std`` of a
  constant row has a NaN gradient. A constant row gets :math:`s := 1` (its
  z-scores are 0 whatever :math:`s` is).

  Args:
    x: ``[n]`` inputs.

  Returns:
    ``[n]`` values in :math:`(0, 1)`.
  """
  # The z-score does not change when x is multiplied by a positive constant:
  # bring max |x| near 1 first, so that the mean and the squares cannot
  # overflow (float32 rows near 3e38).
  root = scale_root(x)
  x = x / root / root
  centred = x - jnp.mean(x)
  var = jnp.mean(centred**2)
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 1.0)
  return jax.nn.sigmoid(centred / (std + _STD_GUARD))


def scale_root(x: jax.Array) -> jax.Array:
  r"""A power of two :math:`r` with :math:`\max_i |x_i| / r^2 \in [1/4, 1)`.

  Dividing by :math:`r` twice brings a row to the scale of 1 without
  rounding (powers of two), and without forming :math:`1 / r^2`, which is
  subnormal for rows near the largest float (XLA may divide by multiplying
  with the reciprocal, and flushes subnormals to zero). 1 for a row of zeros
  or with a non-finite value. A constant: not differentiated.
  """
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x)))
  scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
  return jnp.ldexp(jnp.ones_like(scale), jnp.frexp(scale)[1] // 2)


def squash(x: jax.Array, squashing: str | Callable) -> jax.Array:
  """Maps one row ``[n]`` to the space of the target locations."""
  if squashing == "sigmoid":
    return sigmoid_zscore(x)
  if squashing == "none":
    return x
  return squashing(x)


def monotone_dual_potentials(z, a, y, b):
  r"""Dual potentials of unregularised 1-D OT with cost :math:`(z - y)^2`.

  The increment :math:`g_{j+1} - g_j` is set by the source :math:`z^\ast`
  whose mass straddles the boundary between targets :math:`j` and
  :math:`j + 1`. When the boundary falls exactly between two sources
  :math:`z_{(k)} < z_{(k+1)}` (always the case for ``n`` uniform inputs onto
  uniform, top-k or top-k-mask targets), any :math:`z^\ast` between them is
  optimal; we take their midpoint, which is where the entropic potentials go
  as :math:`\varepsilon \to 0` (the leaks across the boundary balance). An
  end point would be off by up to :math:`(y_{j+1} - y_j)(z_{(k+1)} -
  z_{(k)})`, i.e. :math:`e^{100}` in a kernel-mode scaling for a sorted pair
  at the default :math:`\varepsilon`.

  Args:
    z: ``[n]`` source points, any order.
    a: ``[n]`` source weights summing to 1.
    y: ``[m]`` increasing target points.
    b: ``[m]`` target weights summing to 1.

  Returns:
    ``(f, g)``, ``[n]`` and ``[m]``, with :math:`f_i + g_j \le C_{ij}`, equality
    on the support of the monotone (north-west corner) coupling.
  """
  n = z.shape[0]
  order = jnp.argsort(z)
  z_sorted = z[order]
  cum_a = jnp.cumsum(a[order])
  tol = _mass_tolerance(a)
  boundaries = jnp.cumsum(b)[:-1]
  # Sources holding the mass just below and just above each boundary; the
  # same source unless the boundary falls between two.
  lo = jnp.clip(jnp.searchsorted(cum_a, boundaries - tol), 0, n - 1)
  hi = jnp.clip(jnp.searchsorted(cum_a, boundaries + tol), 0, n - 1)
  z_sorted = _tie_symmetric(z_sorted)
  z_star = 0.5 * (z_sorted[lo] + z_sorted[hi])
  step = (y[1:] - y[:-1]) * (y[1:] + y[:-1] - 2.0 * z_star)
  g = jnp.concatenate([jnp.zeros((1,), z.dtype), jnp.cumsum(step)])
  f = jnp.min((z[:, None] - y[None, :]) ** 2 - g[None, :], axis=1)
  return f, g


def _tie_symmetric(z_sorted: jax.Array) -> jax.Array:
  """``z_sorted`` itself, differentiated as the mean of its tie group: which of tied sources straddles a boundary
  is decided by the order ``argsort`` happened to give them, and the duals' derivative should not depend on it."""
  first = jnp.searchsorted(z_sorted, z_sorted, side="left")
  last = jnp.searchsorted(z_sorted, z_sorted, side="right")
  total = jnp.concatenate([jnp.zeros((1,), z_sorted.dtype), jnp.cumsum(z_sorted)])
  mean = (total[last] - total[first]) / (last - first).astype(z_sorted.dtype)
  return jax.lax.stop_gradient(z_sorted) + (mean - jax.lax.stop_gradient(mean))


def _mass_tolerance(a: jax.Array) -> jax.Array:
  """Cumulated masses closer than this count as equal: a boundary between targets within it of a cumulated source
  mass falls between two sources. Float32 cumulative sums of ``n`` masses are off by up to a few ``n * eps``
  (measured: 0.5% of a mass 1/n at n = 1e4)."""
  return jnp.min(a) * min(0.25, 16 * a.shape[0] * float(jnp.finfo(a.dtype).eps))


def monotone_support(z: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The support of the monotone coupling, sources tied in :math:`z` merged: ``(support, tied, leader)``:
  ``[n, m]`` booleans, ``tied`` marking the entries of tie groups split between targets, and ``[n]`` the index of
  a representative of each source's tie group (itself when untied).

  Source :math:`i` holds the cumulative-mass interval of its tie group (the sources with the same :math:`z_i`,
  whose cost rows are equal), target :math:`j` the interval :math:`[b_1 + \dots + b_{j-1}, b_1 + \dots + b_j]`;
  :math:`(i, j)` is in the support when the two overlap by more than the tolerance of
  :func:`monotone_dual_potentials` (a boundary that close to a source edge falls between two sources there too).
  On it the reduced cost of those duals is 0 in exact arithmetic, and every row and column of it (but for targets
  or tie groups lighter than twice the tolerance) holds an entry of a coupling with marginals ``a`` and ``b``.
  The reduced cost's derivative in :math:`z` is 0 there too, but for ``tied`` entries: moving one source of a split
  tie group moves the boundary between its targets.

  Args:
    z: ``[n]`` source points, any order.
    a: ``[n]`` source weights summing to 1.
    b: ``[m]`` target weights summing to 1.
  """
  n = z.shape[0]
  order = jnp.argsort(z)
  z_sorted = z[order]
  cum_a = jnp.cumsum(a[order])
  first = jnp.searchsorted(z_sorted, z_sorted, side="left")
  last = jnp.searchsorted(z_sorted, z_sorted, side="right") - 1
  # The outer ends are open: the two totals, both 1, differ by rounding.
  group_lo = jnp.where(first == 0, -jnp.inf, cum_a[first - 1])
  group_hi = jnp.where(last == n - 1, jnp.inf, cum_a[last])
  cum_b = jnp.cumsum(b)[:-1]
  target_lo = jnp.concatenate([jnp.full((1,), -jnp.inf, b.dtype), cum_b])
  target_hi = jnp.concatenate([cum_b, jnp.full((1,), jnp.inf, b.dtype)])
  overlap = jnp.minimum(group_hi[:, None], target_hi[None, :]) - jnp.maximum(group_lo[:, None], target_lo[None, :])
  support = overlap > _mass_tolerance(a)
  tied = support & ((last > first) & (jnp.sum(support, axis=1) > 1))[:, None]

  def unsort(values):
    return jnp.zeros_like(values).at[order].set(values)

  return unsort(support), unsort(tied), unsort(order[first])


def _exact_zero_minima(reduced: jax.Array) -> jax.Array:
  r"""Shifts the reduced cost so that it is :math:`\ge 0` with an exact 0 in
  every row and column.

  In exact arithmetic the reduced cost already is; in floating point
  :math:`C - f^0 - g^0` is off by a few roundings of the cost (measured:
  :math:`-7.5 \times 10^{-9}` on a float32 row of 8), which the kernel
  :math:`e^{-\bar C / \varepsilon}` amplifies without bound as
  :math:`\varepsilon \to 0`: at :math:`\varepsilon = 10^{-12}` a negative
  entry gave :math:`e^{7450} = \infty` (NaN plan, values and gradients),
  and a positive one on the support would empty a row or column of the
  kernel (:math:`0/0` scalings). Subtracting the row minima, then the
  column minima, fixes both exactly: :math:`x - \min \ge 0` in IEEE
  arithmetic (rounding is monotone), and a column holding a row's 0 has
  minimum 0, so the second shift keeps the rows' zeros. So every row and
  column of the kernel holds an entry equal to 1 and no entry above 1, at
  every :math:`\varepsilon` (down to the smallest float, where the kernel
  is the 0/1 pattern of the zeros and the plan the hard one). Both shifts
  are separable, of the size of rounding, and leave the entropic plan
  unchanged; they are constants (not differentiated).
  """
  row_min = jax.lax.stop_gradient(jnp.min(reduced, axis=1, keepdims=True))
  reduced = reduced - row_min
  col_min = jax.lax.stop_gradient(jnp.min(reduced, axis=0, keepdims=True))
  return reduced - col_min


@jax.tree_util.register_pytree_node_class
class _ReducedKernelGeometry(geometry.Geometry):
  r"""A geometry given by the kernel of the reduced cost, for kernel mode.

  ott-jax's ``apply_kernel`` raises the kernel to the power
  :math:`\varepsilon / \varepsilon_t` of an epsilon schedule at every call, a
  traced ``pow`` over all :math:`nm` entries that costs as much as a
  log-domain iteration. Our epsilon does not change over the iterations (no
  schedule), so the kernel is applied as is. Epsilon itself stays a pytree
  leaf of the geometry (it may be traced, and is differentiated).

  The solver's "potentials" are the scalings themselves here (start them at
  scalings, read the plan off them): ott-jax converts its kernel-mode state
  to :math:`f = \varepsilon \log u` and back, :math:`u = e^{f/\varepsilon}`,
  an identity whose unrolled derivative passes through :math:`1/\varepsilon`
  and back; at a small epsilon that overflowed (float32, a ``sort_with`` of
  values near 1e30: NaN gradients at :math:`\varepsilon \le 10^{-8}`) or
  left rounding divided by :math:`\varepsilon`. Only the regularised cost,
  which we never read, uses them otherwise.
  """

  def apply_kernel(self, vec, eps=None, axis=0):
    del eps  # No schedule: the exponent would be 1.
    kernel = self.kernel_matrix
    return kernel @ vec if axis == 1 else vec @ kernel

  def potential_from_scaling(self, scaling):
    return scaling

  def scaling_from_potential(self, potential):
    return potential


def _reduced_cost(z: jax.Array, a: jax.Array, y: jax.Array, b: jax.Array, *, differentiate_duals: bool) -> jax.Array:
  r"""The reduced cost :math:`\bar C = C - f^0 - g^0 \ge 0` of the monotone duals, ``[n, m]``, exactly 0 on their
  support.

  :func:`_exact_zero_minima` makes it :math:`\ge 0` with a 0 in every row and column; :func:`monotone_support`
  says where else it must be 0. In exact arithmetic it is, on the whole support (the monotone coupling, tie groups
  merged); in floating point, entries where a source's mass is split between targets come out at a few roundings of
  the cost (measured: 3.7e-9 in float32), and once :math:`\varepsilon` is below that the kernel there is 0: the
  kernel's zeros then leave no coupling with the prescribed marginals (a source with no target, a target with no
  source), the scalings run off and the plan is NaN (``quantile`` at :math:`\varepsilon \le 10^{-11}` in float32).
  Setting the support to an exact 0 changes the cost by rounding, where its derivative is 0 in exact arithmetic too
  (and is then 0, not rounding that unrolled derivatives would divide by :math:`\varepsilon`).

  With ``differentiate_duals`` the duals are functions of ``z`` (unrolled differentiation), and the tied entries of
  :func:`monotone_support` keep the reduced cost's derivative along the moves that split their tie group
  (:func:`_moves_within_ties`); otherwise the result is a constant.
  """

  def reduced_at(z):
    f0, g0 = monotone_dual_potentials(z if differentiate_duals else jax.lax.stop_gradient(z), a, y, b)
    return _exact_zero_minima((z[:, None] - y[None, :]) ** 2 - f0[:, None] - g0[None, :])

  support, tied, leader = monotone_support(jax.lax.stop_gradient(z), a, b)
  reduced = reduced_at(z)
  exact = jnp.where(support, 0.0 * reduced, reduced)  # 0, or NaN in a row with a NaN (which must stay NaN)
  if differentiate_duals:
    # Tied entries: 0, differentiated along the moves of z that split tie groups (_moves_within_ties).
    moved = reduced_at(jax.lax.stop_gradient(z) + _moves_within_ties(z, leader))
    exact = exact + jnp.where(tied, moved - jax.lax.stop_gradient(moved), 0.0)
  return exact


@jax.custom_vjp
def _moves_within_ties(z: jax.Array, leader: jax.Array) -> jax.Array:
  r"""Zeros ``[n]``, whose tangent is :math:`\dot z_i` minus its mean over the tie group of :math:`i` (``leader``
  names the group): the part of a move of :math:`z` that splits tie groups.

  On the monotone support the reduced cost is 0 in exact arithmetic, and stays 0 under every move of :math:`z`
  but those that split a tie group whose mass straddles targets: there it has a kink (the first of the tied
  sources takes the lower targets). Unrolled, its derivative on those entries is divided by :math:`\varepsilon`
  (the kernel's); differentiated along all of :math:`\dot z`, the tied sources' contributions, which cancel for
  a cotangent that does not tell them apart (``sort`` of exactly tied values), left rounding divided by
  :math:`\varepsilon` (float32: 1e2 at :math:`10^{-19}`). Along these moves only, and with the group mean taken so
  that equal cotangents of a group cancel exactly (:func:`_moves_within_ties_bwd`), they cancel to 0.
  """
  del leader
  return 0.0 * z  # Not zeros_like: under vmap that is one unbatched row, whose cotangent sums the batch's.


def _moves_within_ties_bwd(leader, cotangent):
  # The group mean of the cotangent as the representative's value plus the mean deviation from it: exactly the
  # common value when the group's cotangents are equal, so that they cancel to 0.
  deviation = cotangent - cotangent[leader]
  sums = jnp.zeros_like(cotangent).at[leader].add(deviation)
  counts = jnp.zeros_like(cotangent).at[leader].add(1.0)
  return deviation - sums[leader] / counts[leader], None


_moves_within_ties.defvjp(lambda z, leader: (_moves_within_ties(z, leader), leader), _moves_within_ties_bwd)


class _Solver(NamedTuple):
  """Static settings of one transport (hashable: a ``nondiff_argnums`` entry)."""

  locations: tuple[float, ...]
  weights: tuple[float, ...]
  threshold: float
  min_iterations: int
  max_iterations: int
  initializer: str


def _solve(solver: _Solver, z: jax.Array, epsilon: jax.Array, differentiate_start: bool) -> tuple[jax.Array, jax.Array]:
  """Runs ott-jax's Sinkhorn; returns the ``[n, m]`` plan and ``converged``."""
  n = z.shape[0]
  dtype = z.dtype
  y = jnp.asarray(np.asarray(solver.locations), dtype=dtype)
  a = jnp.full((n,), 1.0 / n, dtype=dtype)
  b = jnp.asarray(np.asarray(solver.weights), dtype=dtype)
  if solver.initializer == "monotone":
    # Kernel mode on the reduced cost (see the module docstring): the
    # scalings start at 1, i.e. the potentials at the monotone duals.
    # Unrolled iterates depend on that start, so it is differentiated there.
    reduced = _reduced_cost(z, a, y, b, differentiate_duals=differentiate_start)
    geom = _ReducedKernelGeometry(kernel_matrix=jnp.exp(-reduced / epsilon), epsilon=epsilon)
    lse_mode = False
  else:
    geom = pointcloud.PointCloud(z[:, None], y[:, None], epsilon=epsilon)
    lse_mode = True
  problem = linear_problem.LinearProblem(geom, a=a, b=b)
  out = ott_sinkhorn.Sinkhorn(
    lse_mode=lse_mode,
    threshold=solver.threshold,
    min_iterations=solver.min_iterations,
    max_iterations=solver.max_iterations,
    # Unrolled: differentiate the iterations. Implicit: never differentiated
    # here (the plan's custom_vjp), so no ott-jax implicit machinery either.
    implicit_diff=None,
    initializer=ott_init.DefaultInitializer(),
  )(problem, init=None if lse_mode else (jnp.ones((n,), dtype), jnp.ones(b.shape, dtype)))
  if lse_mode:
    plan = geom.transport_from_potentials(out.f, out.g)
  else:  # The scalings (_ReducedKernelGeometry).
    plan = geom.transport_from_scalings(out.f, out.g)
  return plan, out.converged


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _implicit_plan(solver: _Solver, z: jax.Array, epsilon: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The converged plan, differentiated by the implicit function theorem."""
  return _solve(solver, z, epsilon, differentiate_start=False)


def _implicit_plan_fwd(solver, z, epsilon):
  plan, converged = _solve(solver, z, epsilon, differentiate_start=False)
  return (plan, converged), (z, epsilon, plan)


def _implicit_plan_bwd(solver, residuals, cotangents):
  r"""Pulls the plan's cotangent back to :math:`(z, \varepsilon)`.

  With :math:`\ell_{ij} = \log P_{ij} = (f_i + g_j - C_{ij}) / \varepsilon`
  and the optimality conditions :math:`P\mathbf{1} = a`,
  :math:`P^\top\mathbf{1} = b`, a cotangent :math:`\bar P` gives the cost
  cotangent

  .. math::

    \bar C_{ij} = \frac{P_{ij}}{\varepsilon}
      (\lambda_i + \mu_j - \bar P_{ij}),
    \qquad
    \begin{pmatrix} \mathrm{diag}(r) & P \\ P^\top & \mathrm{diag}(c)
    \end{pmatrix}
    \begin{pmatrix} \lambda \\ \mu \end{pmatrix}
    = \begin{pmatrix} (\bar P \odot P)\mathbf{1} \\
      (\bar P \odot P)^\top\mathbf{1} \end{pmatrix},

  (:math:`r, c` the plan's marginals), and then
  :math:`\bar z_i = 2\sum_j \bar C_{ij}(z_i - y_j)` and
  :math:`\bar\varepsilon = \sum_{ij} \bar C_{ij}\ell_{ij}
  = -\sum_{ij} \bar C_{ij} C_{ij} / \varepsilon`: the rows and columns of
  :math:`\bar C` sum to 0 (the two block equations), so the potentials in
  :math:`\ell` drop out, and no logarithm is taken. :math:`(\lambda, \mu)`
  is defined up to :math:`(t, -t)`, which :math:`\lambda_i + \mu_j` does
  not see. ott-jax's ``ImplicitDiff`` computes the same quantities through
  a VJP of its first-order conditions, several more passes over the
  :math:`nm` entries; here the backward reads them in three einsums besides
  the linear solve (:func:`_adjoint_error`).

  Both cotangents divide by :math:`\varepsilon`, so the error of
  :math:`\lambda_i + \mu_j - \bar P_{ij}` must be small relative to
  :math:`\varepsilon`, which one solve is not at a small one
  (:func:`_adjoint_error` refines it). For the same reason
  :math:`\bar\varepsilon` is computed with the reduced cost
  :math:`C - f^0 - g^0` (:func:`_reduced_cost`) in place of :math:`C`: the
  two differ by terms separable in :math:`(i, j)`, which the zero row and
  column sums of :math:`\bar C` annihilate, but the reduced cost is exactly 0
  where the plan's mass is (the hard plan's support), so that what is left of
  the error there does not reach :math:`\bar\varepsilon` amplified by
  :math:`1/\varepsilon^2`.
  """
  z, epsilon, plan = residuals
  plan_bar = cotangents[0]
  n, dtype = z.shape[0], z.dtype
  y = jnp.asarray(np.asarray(solver.locations), dtype=dtype)
  a = jnp.full((n,), 1.0 / n, dtype=dtype)
  b = jnp.asarray(np.asarray(solver.weights), dtype=dtype)
  error = _adjoint_error(plan, plan_bar, z, epsilon)
  reduced = _reduced_cost(z, a, y, b, differentiate_duals=False)
  # The barrier keeps XLA from sharing the broadcasts of z, y and epsilon
  # with the forward's cost, which it then writes out as [n, m] arrays.
  z, y, epsilon = jax.lax.optimization_barrier((z, y, epsilon))
  cost_bar = plan * error / epsilon
  # Reductions of products of [n, m] arrays are written as einsums: XLA's CPU
  # backend turns jnp.sum(a * broadcast(v), axis) into fused loops that ran
  # 20 to 100 times slower than the equivalent dot_general at n = m = 1000.
  z_bar = -2.0 * jnp.einsum("ij,ij->i", cost_bar, y[None, :] - z[:, None])
  eps_bar = -jnp.einsum("ij,ij->", cost_bar, reduced) / epsilon
  return z_bar, eps_bar


_implicit_plan.defvjp(_implicit_plan_fwd, _implicit_plan_bwd)


def _adjoint_error(plan: jax.Array, plan_bar: jax.Array, z: jax.Array, epsilon: jax.Array) -> jax.Array:
  r""":math:`E_{ij} = \lambda_i + \mu_j - \bar P_{ij}` of :func:`_implicit_plan_bwd`, ``[n, m]``, to an error
  small relative to :math:`\varepsilon`, by iterative refinement.

  :math:`P \odot E` has zero row and column sums (the adjoint system), and where the plan is hard it is 0 up to
  exponentially small terms: a tree of entries with zero row and column sums is 0. One solve leaves an error of
  :math:`\kappa u |\bar P|` (:math:`u` the unit roundoff, :math:`\kappa` the condition number, which the ridge
  of :func:`_adjoint_solver` bounds), and the cotangents divide it by :math:`\varepsilon`: in float32, ``quantile``'s
  gradient was off by O(1) at :math:`\varepsilon = 10^{-8}` and by :math:`10^{11}` at :math:`10^{-19}`. Each pass
  solves the system again for the residual :math:`-(P \odot E)\mathbf{1}, -(P \odot E)^\top\mathbf{1}` (the
  factorisation or preconditioner is reused) and adds the correction, dividing the error by about
  :math:`1 / (\kappa u)` (measured: :math:`10^{3}` to :math:`10^{4}` a pass in float32). The passes stop once the
  residual is below ``_REFINE_TOL`` times :math:`\varepsilon` times the right-hand side's, once a pass no
  longer divides it by 4 (the rounding floor), or after ``_REFINE_MAX_PASSES``. In float32 at the default
  :math:`\varepsilon` that is the one solve (``ranks`` at n = 8 and 1000, ``quantile``); further passes: 1 to 2 at
  :math:`10^{-3}` to :math:`10^{-8}`, 3 to 6 at :math:`10^{-12}` to :math:`10^{-19}`.
  """
  solve = _adjoint_solver(plan, z)
  hf, hg = jnp.einsum("ij,ij->i", plan_bar, plan), jnp.einsum("ij,ij->j", plan_bar, plan)

  def size(h):
    return jnp.maximum(jnp.max(jnp.abs(h[0])), jnp.max(jnp.abs(h[1])))

  def residual(error):  # The right-hand side of the correction.
    return -jnp.einsum("ij,ij->i", error, plan), -jnp.einsum("ij,ij->j", error, plan)

  def refine(state):
    passes, error, rhs, _, _ = state
    lam, mu = solve(*rhs)
    error = error + lam[:, None] + mu[None, :]
    new = residual(error)
    return passes + 1, error, new, size(new), size(rhs)

  def worth_it(state):
    passes, _, _, now, before = state
    return (passes < _REFINE_MAX_PASSES[np.dtype(plan.dtype)]) & (now > target) & (now < 0.25 * before)

  lam, mu = solve(hf, hg)
  error = lam[:, None] + mu[None, :] - plan_bar
  target = _REFINE_TOL[np.dtype(plan.dtype)] * epsilon * size((hf, hg))
  rhs = residual(error)
  state = (jnp.zeros((), jnp.int32), error, rhs, size(rhs), jnp.asarray(jnp.inf, plan.dtype))
  return jax.lax.while_loop(worth_it, refine, state)[1]


def _adjoint_solver(plan: jax.Array, z: jax.Array) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  r"""``solve(hf, hg) -> (lambda, mu)``, solving :math:`\begin{pmatrix} D_r & P \\ P^\top & D_c\end{pmatrix}
  \begin{pmatrix}\lambda\\ \mu\end{pmatrix} = \begin{pmatrix} h_f\\ h_g
  \end{pmatrix}`, :math:`\mathbf{1}^\top h_f = \mathbf{1}^\top h_g`; the set-up (a factorisation or a
  preconditioner) is done once.

  The matrix (the Jacobian of the optimality conditions times
  :math:`\varepsilon`) is symmetric positive semi-definite with null space
  :math:`(\mathbf{1}, -\mathbf{1})`. We eliminate the larger side: the Schur
  complement :math:`S = D_c - P^\top D_r^{-1} P` is the Laplacian of the
  weights :math:`W = P^\top D_r^{-1} P` (null vector :math:`\mathbf{1}`),
  made definite by :math:`\rho\mathbf{1}\mathbf{1}^\top`, which moves the
  solution only along :math:`(\mathbf{1}, -\mathbf{1})`. ott-jax instead
  runs a normal-equations solve on a non-symmetric preconditioned form,
  which squares the condition number of this singular system and returns
  NaN in float32.

  Up to ``_DENSE_SOLVE_MAX`` unknowns :math:`S` is materialised and
  LU-factorised (exact, no iteration count to tune). Above, conjugate gradient with
  the preconditioner of :func:`_path_preconditioner`: 5 to 10 iterations
  for :math:`\varepsilon` from 0.1 to :math:`10^{-5}` at
  :math:`n = m = 1000` (without it: 8 at the default :math:`10^{-2}`, 69 at
  :math:`10^{-4}`, 209 at :math:`10^{-5}`, and no convergence in 2000 at
  :math:`10^{-6}`, where it takes 62).
  """
  n, m = plan.shape
  transposed = m > n
  if transposed:  # Eliminate the larger side; the system is symmetric.
    plan = plan.T
  r = jnp.sum(plan, axis=1)
  c = jnp.sum(plan, axis=0)
  # Rows with r_i == 0 cannot happen for finite inputs (exp of finite).
  r = jnp.where(r > 0, r, 1.0)
  size = c.shape[0]
  # The plan's mass is 1 (to the solver threshold); rho only sets the
  # eigenvalue of the gauge mode, mean(c) = 1 / size. (Formed from c, XLA
  # would read the whole plan once more.)
  rho = 1.0 / size**2
  # A nearly disconnected P leaves a mode of S with eigenvalue ~ its
  # cross-block mass, which can round off against rho. The ridge keeps the
  # solve finite; it only damps modes whose cross mass is below float
  # rounding, and the loss gradient along those is as small.
  ridge = 16 * float(jnp.finfo(plan.dtype).eps) * (jnp.max(c) + rho * size)

  if size <= _DENSE_SOLVE_MAX:
    # S from the off-diagonal weights: c_j - W_jj = sum_{k != j} W_jk
    # exactly, but the direct diag(c) - W cancels to float rounding when P
    # is (nearly) block diagonal (ties, small epsilon), which can make the
    # gauge-fixed S singular: inf/NaN.
    w = (plan.T / r) @ plan
    w = w * (1.0 - jnp.eye(size, dtype=w.dtype))
    factors = jax.scipy.linalg.lu_factor(jnp.diag(jnp.sum(w, axis=1) + ridge) - w + rho)
    schur_solve = functools.partial(jax.scipy.linalg.lu_solve, factors)
  else:
    # The S side in increasing order: the targets already are, the inputs
    # (eliminated last when there are more targets) are sorted.
    order = jnp.argsort(jax.lax.stop_gradient(z)) if transposed else None

    def schur_apply(v):
      return c * v - ((plan @ v) / r) @ plan + rho * jnp.sum(v) + ridge * v

    precondition = _path_preconditioner(plan, r, c, rho, ridge, order)

    def schur_solve(rhs):
      return jax.scipy.sparse.linalg.cg(
        schur_apply, rhs, M=precondition, tol=_CG_TOL[np.dtype(plan.dtype)], maxiter=_CG_MAX_ITERATIONS
      )[0]

  def solve(hf, hg):
    if transposed:
      hf, hg = hg, hf
    mu = schur_solve(hg - (hf / r) @ plan)
    lam = (hf - plan @ mu) / r
    return (mu, lam) if transposed else (lam, mu)

  return solve


def _path_preconditioner(plan, r, c, rho, floor, order):
  r"""An approximate inverse of :math:`S + \rho\mathbf{1}\mathbf{1}^\top`
  in :math:`O(nm)` set-up and :math:`O(m)` per application.

  In 1-D the plan is concentrated near the monotone coupling, so the graph
  of :math:`W = P^\top D_r^{-1} P` is close to a path in sorted order, with
  edges of length :math:`|k - l|` up to the plan's width. Its Laplacian
  :math:`S` acts on smooth vectors like the path Laplacian :math:`L` with,
  on the edge between sorted positions :math:`t` and :math:`t + 1`, the
  weight of every edge crossing it times its length,
  :math:`\omega_t = \sum_{k \le t < l} W_{kl}(l - k)`, and on oscillating
  ones like its degrees :math:`d = \mathrm{diag}(S)`. (For a translation-
  invariant kernel of width :math:`h`: :math:`S(\xi) \approx
  d\,(1 - e^{-h^2\xi^2/2})` against :math:`\min(d h^2\xi^2/2, d)`.) So

  .. math::

    M^{-1} = L^+ + D^{-1} + \frac{\mathbf{1}\mathbf{1}^\top}{\rho m^2}

  keeps the preconditioned spectrum in a small interval whatever the
  bandwidth: :math:`L` is exact when the plan is a path (small
  :math:`\varepsilon`), :math:`D` when it is spread out (large). Both come
  from the plan without forming :math:`W`: with :math:`\bar k_i` the
  barycentric position of row :math:`i`,
  :math:`\omega_t = \sum_{k \le t} \sum_i P_{ik}(\bar k_i - k)`, and
  :math:`d_k = c_k - \sum_i P_{ik}^2 / r_i`. :math:`L^+` is two cumulative
  sums (flux through each edge, then potential drops). Weights below the
  ``floor`` (float rounding) are raised to it.
  """
  size = c.shape[0]
  positions = jnp.arange(size, dtype=plan.dtype)
  if order is not None:  # Position of each unknown in sorted order.
    positions = jnp.zeros_like(positions).at[order].set(positions)
  barycentres = (plan @ positions) / r
  flux = jnp.einsum("ij,ij->j", plan, barycentres[:, None] - positions[None, :])
  degrees = c - jnp.einsum("ij,ij->j", plan / r[:, None], plan)
  degrees = jnp.maximum(degrees, floor)
  if order is not None:
    flux = flux[order]
  weights = jnp.maximum(jnp.cumsum(flux)[:-1], floor)

  def apply(v):
    mean = jnp.mean(v)
    centred = v - mean
    if order is not None:
      centred = centred[order]
    drops = -jnp.cumsum(centred)[:-1] / weights
    potential = jnp.concatenate([jnp.zeros((1,), v.dtype), jnp.cumsum(drops)])
    potential = potential - jnp.mean(potential)
    if order is not None:
      potential = jnp.zeros_like(potential).at[order].set(potential)
    return potential + mean / (rho * size * size) + v / degrees

  return apply


class Transport(NamedTuple):
  """Plan-level output of one row's transport.

  Attributes:
    plan: ``[n, m]`` coupling, rows sum to about :math:`1/n`, columns to
      about :math:`b`.
    row_sums: ``[n]`` exact row sums of ``plan``.
    col_sums: ``[m]`` exact column sums of ``plan``.
    converged: scalar bool, whether the solver reached ``threshold``.
  """

  plan: jax.Array
  row_sums: jax.Array
  col_sums: jax.Array
  converged: jax.Array


def transport(
  z: jax.Array,
  locations: tuple[float, ...],
  weights: tuple[float, ...],
  *,
  epsilon: ArrayLike,
  threshold: float,
  min_iterations: int,
  max_iterations: int,
  differentiation: str,
  initializer: str,
) -> Transport:
  """Solves entropic OT from ``z`` (uniform mass) to the target measure.

  Args:
    z: ``[n]`` squashed inputs.
    locations: ``m`` target locations.
    weights: ``m`` target weights.
    epsilon: scalar entropic regularisation (absolute, as in ott-jax's
      soft_sort); a Python float or a possibly traced 0-d array, which is
      differentiated like any other input.
    threshold: stop when the L1 marginal error is below it.
    min_iterations: minimum number of Sinkhorn iterations.
    max_iterations: maximum number of Sinkhorn iterations.
    differentiation: ``"implicit"`` or ``"unroll"``.
    initializer: ``"monotone"`` or ``"zeros"``.

  Returns:
    A :class:`Transport`.
  """
  dtype = z.dtype
  # Above sqrt(max float) (1.8e19 in float32) the kernel exp(-C / epsilon)
  # is 1 to rounding for any cost below 1e12 (the sigmoid squashing's is
  # below 1): the plan is the independent coupling a b^T. Past it, the
  # solver's epsilon * log(scaling) overflows (NaN at epsilon = 3e38 in
  # float32), so the larger epsilons are computed as that one; the
  # derivative with respect to epsilon, below 1 / epsilon^2, is 0 there.
  # Below sqrt(smallest normal float) (1.1e-19 in float32, 1.5e-154 in
  # float64) epsilon is computed as that value. The plan there is already
  # the hard one (cost gaps above rounding give kernel ratios below
  # exp(-1e4)), but the implicit backward's cotangents scale as rounding /
  # epsilon (z) and rounding / epsilon^2 (epsilon): measured on quantile's
  # split target in float32, inf at epsilon = 1e-30, and smaller epsilons
  # (subnormal ones flush to 0) gave 0 / 0. At the floor they stay finite;
  # the derivative with respect to epsilon is 0 below it.
  epsilon = jnp.clip(
    jnp.asarray(epsilon, dtype=dtype), float(np.sqrt(np.finfo(dtype).tiny)), float(np.sqrt(np.finfo(dtype).max))
  )
  solver = _Solver(tuple(locations), tuple(weights), threshold, min_iterations, max_iterations, initializer)
  if differentiation == "implicit":
    plan, converged = _implicit_plan(solver, z, epsilon)
  else:
    plan, converged = _solve(solver, z, epsilon, differentiate_start=True)
  return Transport(plan, jnp.sum(plan, axis=1), jnp.sum(plan, axis=0), converged)
