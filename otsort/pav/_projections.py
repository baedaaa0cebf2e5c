"""The two permutahedron projections of Blondel et al. (2020) as differentiable JAX functions.

The solvers (native kernels or pure JAX) return the projection and its block structure. The derivative is then
linear algebra on blocks (Blondel et al., 2020, Section 5): within a block, the L2 projection averages and the
KL projection takes a softmax-weighted average. :mod:`otsort.pav._jacobians` applies those maps: native kernels
that transpose, batch and differentiate as JAX primitives (``impl="native"``/``"auto"``), or segment sums and
gathers (``impl="xla"``), so ``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``vmap`` and higher derivatives all
compose; each costs O(n) on top of the forward pass.

Inputs are rows ``[batch, n]``; block ids are sorted positions in ``[0, n)``, per row.
"""

from __future__ import annotations

import functools

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
import numpy as np

from otsort.pav import _isotonic_xla
from otsort.pav import _jacobians
from otsort.pav import _kernels


def _solver(impl: str, native_fn, xla_fn):
  """Picks the solver for ``impl``; "auto" lowers to the native kernel on each platform that has one."""
  if impl == "xla":
    return xla_fn
  if impl == "native":
    return native_fn

  def auto(*args, **kwargs):
    native = functools.partial(native_fn, **kwargs)
    fallback = functools.partial(xla_fn, **kwargs)
    branches = {p: native if _kernels.unavailable_reason(p) is None else fallback for p in ("cpu", "cuda")}
    return jax.lax.platform_dependent(*args, **branches, default=fallback)

  return auto


def _int_tangent(x: jax.Array) -> np.ndarray:
  return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _is_zero(tangent) -> bool:
  return isinstance(tangent, SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def project_scores(x: jax.Array, epsilon: jax.Array, kl: bool, topk: int, impl: str) -> tuple[jax.Array, jax.Array]:
  """P(x / epsilon, w) for each row of ``x`` ``[batch, n]`` and its block ids; ``epsilon`` is ``[batch, 1]``.

  w = rho = (n, ..., 1) for ``topk`` = 0 (1-based soft ranks), else k ones then zeros (soft top-k mask).
  """
  return _solver(impl, _kernels.scores, _isotonic_xla.scores)(x, epsilon, kl=kl, topk=topk)


@functools.partial(project_scores.defjvp, symbolic_zeros=True)
def _project_scores_jvp(kl, topk, impl, primals, tangents):
  (x, epsilon), (dx, depsilon) = primals, tangents
  r, block = project_scores(x, epsilon, kl, topk, impl)  # called again: higher derivatives see r as a function
  jacobian = lambda v: _jacobians.scores_jvp(r, block, v, kl=kl, impl=impl)
  dr = jnp.zeros_like(r)
  if not _is_zero(dx):
    dr = dr + jacobian(dx) / epsilon  # J (dx / epsilon), scaled after J: J is exactly 0 on one-element blocks
  if not _is_zero(depsilon):
    # dz = -z * depsilon / epsilon, and J z is read off the solution, not formed from z = x / epsilon (which
    # may overflow): within a block r - z is constant (L2), or log r - z is (KL).
    if kl:
      log_r = jnp.where(r > 0, jnp.log(jnp.where(r > 0, r, 1)), 0)
      jz = jacobian(log_r)
    else:
      jz = jacobian(r)
    dr = dr - jz * (depsilon / epsilon)
  return (r, block), (dr, _int_tangent(block))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def project_sort(x: jax.Array, epsilon: jax.Array, kl: bool, impl: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """P(rho / epsilon, x): the soft sort of each row of ``x`` in decreasing order, and block ids (in, out)."""
  return _solver(impl, _kernels.sort, _isotonic_xla.sort)(x, epsilon, kl=kl)


@functools.partial(project_sort.defjvp, symbolic_zeros=True)
def _project_sort_jvp(kl, impl, primals, tangents):
  (x, epsilon), (dx, depsilon) = primals, tangents
  out, block_in, block_out = project_sort(x, epsilon, kl, impl)
  dout = jnp.zeros_like(out)
  if not _is_zero(dx):
    # Each output is a block mean of x (L2), or LSE_B(x) plus a constant (KL): its derivative is the softmax of x
    # over the block.
    dout = dout + _jacobians.sort_jvp(x, block_in, block_out, dx, kl=kl, impl=impl)
  if not _is_zero(depsilon):
    # out = a - v_B with a = rho / epsilon, da = -a depsilon / epsilon. Within a block a - out is constant, so
    # the centred a (L2: minus its block mean; KL: minus its block softmax mean) is the centred output.
    # Segment ops on every impl: an epsilon derivative is rare, and this one is not a Jacobian-vector product.
    weights = _jacobians.block_weights(out, block_out, kl)
    pooled = _jacobians.gather(_jacobians.block_sums(jnp.ones_like(out), block_out), block_out) > 1
    mean = _jacobians.block_weighted_mean(out, weights, block_out, block_out)
    centred = jnp.where(pooled, out - mean, 0)
    dout = dout - centred * (depsilon / epsilon)
  return (out, block_in, block_out), (dout, _int_tangent(block_in), _int_tangent(block_out))
