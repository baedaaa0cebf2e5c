"""A small NumPy float64 reference of the PAV backend, written from the paper, one row at a time.

Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020. With ``z`` sorted in
decreasing order (``sigma``), the projection onto the permutahedron of ``w`` (``w`` sorted decreasingly) is

  L2:  P(z, w) = z - v(z_sigma, w)[sigma^-1],       v = argmin_{v_1 >= ... >= v_n} 1/2 ||v - (z_sigma - w)||^2
  KL:  P(z, w) = exp(z - v(z_sigma, log w)[sigma^-1]), v = argmin_{v_1 >= ... >= v_n} <exp(s - v), 1> + <w, v>

Both isotonic problems are solved by pooling: every position starts as its own block, and any two adjacent
blocks whose values do not strictly decrease are merged, until none do. Ties are pooled too: that is the rule of
the paper's reference implementation (google-research/fast-soft-sort, "if sol[i] > sol[k]: keep apart"), and it
decides the derivative on the faces of the permutahedron. A block's value is ``mean(s_B) - mean(w_B)`` (L2) or
``LSE(s_B) - LSE(w_B)`` (KL). This file repeats the scan from the left after every merge (quadratic, but
obviously correct), unlike the library's single-pass stack.

L2 is solved in exact rational arithmetic (every float is a fraction), so its ties are exact ties and its blocks
are exact. KL block values are formed as one float64 number; two values count as tied within 1e-12 of their
magnitude, and the results are exact only up to about 1e-16 times the largest ``|s|``: tests scale their
tolerances by it. :func:`jacobian` gives the derivative the pooling rule implies (block averages), for checking
vector-Jacobian products at the kinks, where finite differences mean nothing. Nothing here imports the library.

The public conventions are layered on top:

* ranks (0-based): ``P(sign * x / eps, rho) - 1`` with ``rho = (n, ..., 1)``. The projection gives the largest
  score the largest entry of rho, n, so ascending ranks (smallest value -> 0) use ``sign = +1``, descending -1.
* sort, descending: ``rho / eps - v(rho / eps, x_sorted_desc)``; ascending: ``-sort_desc(-x)``. For KL the value
  function ``v`` is the KL one (the log-domain projection of ``exp(rho / eps)`` onto the permutahedron of
  ``exp(x)``).
* top-k mask: ``P(z, w)`` with ``w`` = k ones then zeros.

The solvers also return block ids (sorted position where the block starts), which the tests use to reason about
the derivative, and :func:`dense_projection_l2` / :func:`dense_projection_kl` solve the projections as generic
constrained problems for tiny ``n``, to check the reduction itself.
"""

from __future__ import annotations

from fractions import Fraction
import itertools

import numpy as np
from scipy import optimize


def _lse(v: np.ndarray) -> float:
  v = np.asarray(v, np.float64)
  top = np.max(v)
  if top == -np.inf:
    return -np.inf
  return float(top + np.log(np.sum(np.exp(v - top))))


def _block_value(s: np.ndarray, w: np.ndarray, kl: bool) -> float:
  if kl:
    lse_w = _lse(w)
    if lse_w == -np.inf:  # a block of zeros of the target (log 0): its value is +inf, its projection 0
      return np.inf
    return _lse(s) - lse_w
  return float(np.mean(s) - np.mean(w))


def _exact_mean(values) -> Fraction:
  return sum((Fraction(float(v)) for v in values), Fraction(0)) / len(values)


def isotonic_decreasing(s: np.ndarray, w: np.ndarray, kl: bool) -> tuple[np.ndarray, np.ndarray]:
  """The decreasing isotonic solution ``v`` for the sorted scores ``s`` and target ``w``, and block starts.

  Brute force: blocks are lists of positions; merge the first adjacent pair whose values do not strictly
  decrease (ties included), rescan. L2 values are exact fractions; KL values are floats, tied within 1e-12.
  """
  s = np.asarray(s, np.float64)
  w = np.asarray(w, np.float64)
  if kl:
    value = lambda b: _block_value(s[b], w[b], True)
    tied_or_increasing = lambda p, c: p <= c + 1e-12 * max(1.0, abs(p), abs(c)) if np.isfinite(p) else p <= c
  else:
    value = lambda b: _exact_mean(s[b]) - _exact_mean(w[b])
    tied_or_increasing = lambda p, c: p <= c
  blocks = [[i] for i in range(len(s))]
  merged = True
  while merged:
    merged = False
    values = [value(b) for b in blocks]
    for k in range(len(blocks) - 1):
      if tied_or_increasing(values[k], values[k + 1]):
        blocks[k : k + 2] = [blocks[k] + blocks[k + 1]]
        merged = True
        break
  v = np.empty(len(s))
  start = np.empty(len(s), np.int64)
  for b in blocks:
    v[b] = float(value(b))
    start[b] = b[0]
  return v, start


def _descending_order(z: np.ndarray) -> np.ndarray:
  return np.argsort(-z, kind="stable")


def project(z: np.ndarray, w: np.ndarray, kl: bool) -> np.ndarray:
  """P(z, w) for one row: the L2 or KL projection of ``z`` onto the permutahedron of ``w``."""
  z = np.asarray(z, np.float64)
  w = np.sort(np.asarray(w, np.float64))[::-1]
  order = _descending_order(z)
  with np.errstate(divide="ignore"):
    target = np.log(w) if kl else w
  v, _ = isotonic_decreasing(z[order], target, kl)
  out = np.empty_like(z)
  with np.errstate(invalid="ignore"):
    out[order] = np.exp(z[order] - v) if kl else z[order] - v
  return out


def rho(n: int) -> np.ndarray:
  return np.arange(n, 0, -1, dtype=np.float64)


def ranks(x: np.ndarray, epsilon: float, kl: bool = False, descending: bool = False) -> np.ndarray:
  """0-based soft ranks of one row."""
  x = np.asarray(x, np.float64)
  sign = -1.0 if descending else 1.0
  return project(sign * x / epsilon, rho(len(x)), kl) - 1.0


def sort(x: np.ndarray, epsilon: float, kl: bool = False, descending: bool = False) -> np.ndarray:
  """Soft sort of one row, increasing unless ``descending``."""
  x = np.asarray(x, np.float64)
  if not descending:
    return -sort(-x, epsilon, kl, descending=True)
  a = rho(len(x)) / epsilon
  v, _ = isotonic_decreasing(a, np.sort(x)[::-1], kl)
  return a - v


def topk_mask(z: np.ndarray, k: int, kl: bool = False) -> np.ndarray:
  """P(z, (1, ..., 1, 0, ..., 0)) with ``k`` ones: the soft top-k mask of the scores ``z``."""
  n = len(z)
  return project(z, (np.arange(n) < k).astype(np.float64), kl)


def _blocks(start: np.ndarray) -> list[np.ndarray]:
  """Sorted positions grouped by block, from the block starts."""
  return [np.flatnonzero(start == first) for first in np.unique(start)]


def jacobian(
  op: str, x: np.ndarray, epsilon: float, kl: bool = False, descending: bool = False, k: int = 0
) -> np.ndarray:
  """``d op(x) / d x`` ``[n, n]`` as the pooling rule makes it (Blondel et al., 2020, Section 5): within each block
  of the isotonic solution the L2 projection averages and the KL projection takes a softmax-weighted average.

  ``op`` is ``"ranks"``, ``"topk_mask"`` (``k`` ones) or ``"sort"``. At a kink (ties pooled) this is the
  generalized Jacobian the reference implementation returns.
  """
  x = np.asarray(x, np.float64)
  n = len(x)
  out = np.zeros((n, n))
  if op == "sort":
    if not descending:
      return jacobian("sort", -x, epsilon, kl, descending=True)
    order = _descending_order(x)
    b = x[order]
    _, start = isotonic_decreasing(rho(n) / epsilon, b, kl)
    for block in _blocks(start):
      weights = np.exp(b[block] - np.max(b[block])) if kl else np.ones(len(block))
      out[np.ix_(block, order[block])] = weights / weights.sum()  # rows: sorted outputs, columns: inputs
    return out
  sign = -1.0 if descending else 1.0
  z = sign * x / epsilon
  w = rho(n) if op == "ranks" else (np.arange(n) < k).astype(np.float64)
  order = _descending_order(z)
  with np.errstate(divide="ignore"):
    target = np.log(w) if kl else w
  _, start = isotonic_decreasing(z[order], target, kl)
  r = project(z, w, kl)
  for block in _blocks(start):
    members = order[block]
    if kl:
      share = r[members] / r[members].sum()
      out[np.ix_(members, members)] = np.diag(r[members]) - np.outer(r[members], share)
    else:
      out[np.ix_(members, members)] = np.eye(len(members)) - 1.0 / len(members)
  return out * (sign / epsilon)


# --- Independent checks of the reduction, for tiny n -------------------------------------------------------


def hard_ranks(x: np.ndarray, descending: bool = False) -> np.ndarray:
  """0-based ranks, ties get the mean of the ranks they share."""
  x = np.asarray(x, np.float64)
  key = -x if descending else x
  return np.array([np.sum(key < key[i]) + (np.sum(key == key[i]) - 1) / 2 for i in range(len(x))])


def _permutahedron_constraints(w: np.ndarray):
  """mu in P(w): sum(mu) = sum(w), and every subset S has sum(mu_S) <= sum of the |S| largest w."""
  n = len(w)
  top = np.cumsum(np.sort(w)[::-1])
  rows, bounds = [], []
  for size in range(1, n):
    for subset in itertools.combinations(range(n), size):
      row = np.zeros(n)
      row[list(subset)] = 1.0
      rows.append(row)
      bounds.append(top[size - 1])
  a, ub = np.array(rows), np.array(bounds)
  return [
    {"type": "eq", "fun": lambda mu: np.sum(mu) - top[-1], "jac": lambda mu: np.ones(n)},
    {"type": "ineq", "fun": lambda mu: ub - a @ mu, "jac": lambda mu: -a},
  ]


def dense_projection_l2(z: np.ndarray, w: np.ndarray) -> np.ndarray:
  """argmin_{mu in P(w)} 1/2 ||mu - z||^2 by SLSQP over all 2^n facets (n <= 6)."""
  z, w = np.asarray(z, np.float64), np.asarray(w, np.float64)
  start = np.full(len(z), np.mean(w))
  result = optimize.minimize(
    lambda mu: 0.5 * np.sum((mu - z) ** 2),
    start,
    jac=lambda mu: mu - z,
    constraints=_permutahedron_constraints(w),
    method="SLSQP",
    options={"ftol": 1e-14, "maxiter": 500},
  )
  return result.x


def dense_projection_kl(z: np.ndarray, w: np.ndarray) -> np.ndarray:
  """argmin_{mu in P(w)} KL(mu, exp(z)) = <mu, log mu - z - 1> + <exp(z), 1>, by SLSQP (n <= 6, w > 0)."""
  z, w = np.asarray(z, np.float64), np.asarray(w, np.float64)
  start = np.full(len(z), np.mean(w))
  objective = lambda mu: np.sum(mu * (np.log(mu) - z - 1.0))
  gradient = lambda mu: np.log(mu) - z
  result = optimize.minimize(
    objective,
    start,
    jac=gradient,
    constraints=_permutahedron_constraints(w),
    bounds=[(1e-12, None)] * len(z),
    method="SLSQP",
    options={"ftol": 1e-15, "maxiter": 500},
  )
  return result.x


def capped_simplex_l2(z: np.ndarray, k: int) -> np.ndarray:
  """Top-k mask (L2) in closed form: clip(z - tau, 0, 1) with tau such that the sum is k (bisection)."""
  z = np.asarray(z, np.float64)
  lo, hi = np.min(z) - 1.0, np.max(z)
  for _ in range(200):
    tau = 0.5 * (lo + hi)
    lo, hi = (tau, hi) if np.sum(np.clip(z - tau, 0.0, 1.0)) > k else (lo, tau)
  return np.clip(z - 0.5 * (lo + hi), 0.0, 1.0)


def capped_simplex_kl(z: np.ndarray, k: int) -> np.ndarray:
  """Top-k mask (KL) in closed form: min(1, exp(z + c)) with c such that the sum is k (bisection)."""
  z = np.asarray(z, np.float64)
  lo, hi = -np.max(z) - 50.0, -np.min(z) + 50.0
  for _ in range(200):
    c = 0.5 * (lo + hi)
    lo, hi = (lo, c) if np.sum(np.minimum(1.0, np.exp(z + c))) > k else (c, hi)
  return np.minimum(1.0, np.exp(z + 0.5 * (lo + hi)))
