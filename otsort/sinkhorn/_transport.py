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
  ``solver`` unbound). We keep ott-jax's machinery (custom VJP, first-order
  conditions, pull-back) but override the solve, see :class:`_ImplicitDiff`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import pointcloud
from ott.initializers.linear import initializers as ott_init
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation as ott_implicit
from ott.solvers.linear import sinkhorn as ott_sinkhorn

# ott's default squashing guards the z-score with this additive constant.
_STD_GUARD = 1e-10
# Up to this size, the implicit linear system is materialised and solved
# densely (exact, no iteration count to tune); above it, conjugate gradient.
_DENSE_SOLVE_MAX = 256
_CG_MAX_ITERATIONS = 500
_CG_TOL = 1e-5


def sigmoid_zscore(x: jax.Array) -> jax.Array:
  r"""ott-jax's default squashing, :math:`\sigma((x - \bar x) / (s + 10^{-10}))`.

  Same function as ott-jax, but with a NaN-free gradient when all inputs tie:
  :math:`\sqrt{\cdot}` has an infinite derivative at 0, so ``jnp.std`` of a
  constant row has a NaN gradient. A constant row gets :math:`s := 1` (its
  z-scores are 0 whatever :math:`s` is).

  Args:
    x: ``[n]`` inputs.

  Returns:
    ``[n]`` values in :math:`(0, 1)`.
  """
  centred = x - jnp.mean(x)
  var = jnp.mean(centred**2)
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 1.0)
  return jax.nn.sigmoid(centred / (std + _STD_GUARD))


def squash(x: jax.Array, squashing: str | Callable) -> jax.Array:
  """Maps one row ``[n]`` to the space of the target locations."""
  if squashing == "sigmoid":
    return sigmoid_zscore(x)
  if squashing == "none":
    return x
  return squashing(x)


def monotone_dual_potentials(z, a, y, b):
  r"""Dual potentials of unregularised 1-D OT with cost :math:`(z - y)^2`.

  Args:
    z: ``[n]`` source points, any order.
    a: ``[n]`` source weights summing to 1.
    y: ``[m]`` increasing target points.
    b: ``[m]`` target weights summing to 1.

  Returns:
    ``(f, g)``, ``[n]`` and ``[m]``, with :math:`f_i + g_j \le C_{ij}`, equality
    on the support of the monotone (north-west corner) coupling.
  """
  order = jnp.argsort(z)
  z_sorted = z[order]
  cum_a = jnp.cumsum(a[order])
  # Source at each boundary between consecutive targets.
  boundaries = jnp.cumsum(b)[:-1]
  idx = jnp.clip(jnp.searchsorted(cum_a, boundaries), 0, z.shape[0] - 1)
  z_star = z_sorted[idx]
  step = (y[1:] - y[:-1]) * (y[1:] + y[:-1] - 2.0 * z_star)
  g = jnp.concatenate([jnp.zeros((1,), z.dtype), jnp.cumsum(step)])
  f = jnp.min((z[:, None] - y[None, :])**2 - g[None, :], axis=1)
  return f, g


@jax.tree_util.register_pytree_node_class
class _MonotoneInitializer(ott_init.DefaultInitializer):
  """ott-jax initializer returning :func:`monotone_dual_potentials`."""

  def __call__(self, ot_prob, lse_mode, rng=None):
    del rng
    if not lse_mode:
      raise ValueError("the monotone initializer needs lse_mode=True")
    geom = jax.lax.stop_gradient(ot_prob.geom)
    a, b = jax.lax.stop_gradient((ot_prob.a, ot_prob.b))
    return monotone_dual_potentials(geom.x[:, 0], a, geom.y[:, 0], b)


class _ImplicitDiff(ott_implicit.ImplicitDiff):
  r"""ott-jax implicit differentiation with a well-posed, float32-safe solve.

  With the identity preconditioner the first-order conditions are
  :math:`P\mathbf{1} - a = 0`, :math:`P^\top\mathbf{1} - b = 0`, whose Jacobian
  in :math:`(f, g)` is symmetric positive semi-definite,

  .. math::

    J = \frac{1}{\varepsilon}\begin{pmatrix} \mathrm{diag}(r) & P \\
    P^\top & \mathrm{diag}(c)\end{pmatrix},
    \qquad r = P\mathbf{1},\; c = P^\top\mathbf{1},

  with null space spanned by :math:`(\mathbf{1}, -\mathbf{1})`. We eliminate
  the larger block (Schur complement
  :math:`S = \mathrm{diag}(c) - P^\top \mathrm{diag}(1/r) P`, PSD, null vector
  :math:`\mathbf{1}`), and add :math:`\rho \mathbf{1}\mathbf{1}^\top` to fix the
  gauge. That changes the solution only along :math:`(\mathbf{1}, -\mathbf{1})`,
  to which the pull-back through the first-order conditions is blind, so the
  gradient is exact. :math:`S + \rho\mathbf{1}\mathbf{1}^\top` is positive
  definite: a dense Cholesky-free LU solve for small sizes, plain conjugate
  gradient with a fixed iteration cap (never raises) otherwise.
  """

  def solve(self, gr, ot_prob, f, g, lse_mode):
    del lse_mode
    eps = ot_prob.geom.epsilon
    plan = ot_prob.geom.transport_from_potentials(f, g)
    gf, gg = gr[0] * eps, gr[1] * eps
    n, m = plan.shape
    if m > n:  # Eliminate the larger side; the problem is symmetric in (f, g).
      plan, gf, gg = plan.T, gg, gf
    r = jnp.sum(plan, axis=1)
    c = jnp.sum(plan, axis=0)
    # Rows with r_i == 0 cannot happen for finite inputs (exp of finite).
    r = jnp.where(r > 0, r, 1.0)
    rho = jnp.mean(c) / c.shape[0]
    rhs = gg - plan.T @ (gf / r)

    if c.shape[0] <= _DENSE_SOLVE_MAX:
      schur = jnp.diag(c) - (plan.T / r) @ plan + rho
      v = jnp.linalg.solve(schur, rhs)
    else:
      def schur_apply(v):
        return c * v - plan.T @ ((plan @ v) / r) + rho * jnp.sum(v)
      v, _ = jax.scipy.sparse.linalg.cg(
          schur_apply, rhs, tol=_CG_TOL, maxiter=_CG_MAX_ITERATIONS
      )
    u = (gf - plan @ v) / r
    if m > n:
      u, v = v, u
    # ott-jax's convention: return minus J^{-1} gr.
    return -jnp.concatenate([u, v])


def _identity(x):
  return x


# One instance, so that it hashes equal across calls (it is static data of the
# Sinkhorn solver pytree).
_IMPLICIT = _ImplicitDiff(precondition_fun=_identity, symmetric=True)


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
    epsilon: float,
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
    epsilon: entropic regularisation (absolute, as in ott-jax's soft_sort).
    threshold: stop when the L1 marginal error is below it.
    min_iterations: minimum number of Sinkhorn iterations.
    max_iterations: maximum number of Sinkhorn iterations.
    differentiation: ``"implicit"`` or ``"unroll"``.
    initializer: ``"monotone"`` or ``"zeros"``.

  Returns:
    A :class:`Transport`.
  """
  n = z.shape[0]
  dtype = z.dtype
  y = jnp.asarray(np.asarray(locations), dtype=dtype)
  a = jnp.full((n,), 1.0 / n, dtype=dtype)
  b = jnp.asarray(np.asarray(weights), dtype=dtype)

  geom = pointcloud.PointCloud(z[:, None], y[:, None], epsilon=epsilon)
  problem = linear_problem.LinearProblem(geom, a=a, b=b)
  solver = ott_sinkhorn.Sinkhorn(
      lse_mode=True,
      threshold=threshold,
      min_iterations=min_iterations,
      max_iterations=max_iterations,
      implicit_diff=_IMPLICIT if differentiation == "implicit" else None,
      initializer=(_MonotoneInitializer() if initializer == "monotone" else
                   ott_init.DefaultInitializer()),
  )
  out = solver(problem)
  plan = geom.transport_from_potentials(out.f, out.g)
  return Transport(plan, jnp.sum(plan, axis=1), jnp.sum(plan, axis=0),
                   out.converged)
