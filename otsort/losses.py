r"""Differentiable losses built on soft ranks: Spearman correlation, soft (top-k) classification errors, and
ranking losses (NDCG, average precision, recall@k) for learning to rank.

Conventions, as in ``optax.losses``: inputs are batch-first; the scores of one example (the values to rank) lie
along ``axis`` (the last by default); losses are returned per example, and the caller averages them. Every
function passes ``epsilon``, ``backend`` and the backend's ``**options`` straight to :func:`otsort.ranks`, so each
works with ``backend="pav"`` (``regularization="l2" | "kl"``) and ``backend="sinkhorn"``.

Argument checks run at trace time and raise ``TypeError`` (a wrong type) or ``ValueError`` (a wrong value) naming
the argument; checks that need values (labels and group ids in range) run when the values are concrete, and under
``jit`` an out-of-range label or group id gives NaN (for that example, or for the grouped result) instead of
silently picking another class or dropping the entry.
"""

from __future__ import annotations

from collections.abc import Callable
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from otsort import _api
from otsort import _checks
from otsort import _contract
from otsort._contract import Backend

__all__ = [
  "spearman_correlation",
  "spearman_loss",
  "spearman_grad_hess",
  "spearman_boosting_objective",
  "soft_error",
  "soft_topk_error",
  "ndcg_loss",
  "ap_loss",
  "recall_loss",
]

_HESSIANS = ("diagonal", "constant")


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _default_epsilon(backend: Any, epsilon: Any) -> Any:
  """The backend's default for None; otherwise epsilon as given (a number, or an array, possibly traced), which
  :func:`otsort.ranks` checks against the rows it ranks."""
  return _contract.default_epsilon(backend) if epsilon is None else epsilon


def _hard_ranks(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """0-based ranks along the last axis, ties sharing the mean of their ranks (``scipy.stats.rankdata`` - 1).

  O(n log n): an entry's tied run in the sorted row is [searchsorted left, searchsorted right). A row with a NaN
  or an infinity among its ``valid`` entries (all entries by default) has no ranks: NaN, like the soft ranks.
  """

  def row(v):
    s = jnp.sort(v)
    left = jnp.searchsorted(s, v, side="left")
    right = jnp.searchsorted(s, v, side="right")
    return (left + right - 1).astype(v.dtype) / 2

  flat = x.reshape(-1, x.shape[-1])
  ranks = jax.vmap(row)(flat).reshape(x.shape)
  valid = jnp.ones(x.shape, bool) if valid is None else valid
  bad = jnp.any(valid & ~jnp.isfinite(x), axis=-1, keepdims=True)
  return jnp.where(bad, jnp.nan, ranks)


def _safe_unit(v: jax.Array, valid: jax.Array) -> jax.Array:
  """Centres the valid entries of each row and scales them to unit norm; a constant row gives zeros (no NaN in
  values or gradients), a row with a NaN gives NaN (it is not hidden as a correlation of 0)."""
  count = jnp.maximum(valid.sum(-1, keepdims=True), 1)
  centred = jnp.where(valid, v - jnp.sum(jnp.where(valid, v, 0), -1, keepdims=True) / count, 0)
  squared = jnp.sum(centred**2, -1, keepdims=True)
  constant = squared == 0  # False for NaN
  norm = jnp.sqrt(jnp.where(constant, 1, squared))
  return jnp.where(constant, 0, centred / norm)


def _concrete_array(name: str, value: Any) -> np.ndarray:
  """A concrete array argument as NumPy; ``TypeError`` naming it for what is not an array of numbers."""
  if value is None or isinstance(value, (str, bytes, dict, set)):
    raise TypeError(f"{name} must be an array of numbers; got {name} = {_checks.show(value)}")
  try:
    array = np.asarray(value)
  except (TypeError, ValueError) as error:
    raise TypeError(f"{name} must be an array of numbers; got {name} = {_checks.show(value)} ({error})") from None
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
    raise TypeError(f"{name} must be an array of numbers; got {name} = {_checks.show(value)} (dtype {array.dtype})")
  return array


def _check_same_shape(pred: jax.Array, target: jax.Array) -> None:
  if pred.shape != target.shape:
    raise ValueError(
      f"pred and target must have the same shape; got pred.shape = {pred.shape} and target.shape = {target.shape}"
    )


class _Groups:
  """Where each group's entries sit in a padded ``[num_groups, length]`` layout.

  ``index[g, j]`` is the position in the 1-D input of the j-th entry of group g (in input order), ``valid[g, j]``
  whether that slot holds an entry. ``length`` is the largest group size when ``groups`` is concrete, ``n``
  otherwise (under ``jit``); ``sizes`` are the concrete group sizes, or None under ``jit``.
  """

  def __init__(self, groups: ArrayLike, num_groups: Any, n: int):
    concrete = _is_concrete(groups)
    groups = _concrete_array("groups", groups) if concrete else groups  # NumPy stays NumPy (and concrete) under jit
    if not jnp.issubdtype(groups.dtype, jnp.integer):
      raise TypeError(f"groups must hold integer group ids; got dtype {groups.dtype}")
    if groups.shape != (n,):
      raise ValueError(
        f"groups must be a 1-D array of integer group ids, one per entry of pred, shape ({n},); "
        f"got groups.shape = {groups.shape}"
      )
    if concrete and groups.size and groups.min() < 0:
      bad = groups[groups < 0]
      allowed = "[0, num_groups)" if num_groups is None else f"[0, num_groups) = [0, {num_groups})"
      raise ValueError(
        f"groups must hold non-negative integer group ids in {allowed}"
        + (" (num_groups is inferred as max(groups) + 1)" if num_groups is None else "")
        + f"; got {bad.size} negative id(s), e.g. {int(bad.ravel()[0])}"
      )
    if num_groups is None:
      if not concrete:
        raise ValueError(
          "num_groups is required when groups is traced (under jit): it fixes the output layout; "
          "pass num_groups=<number of distinct ids> as a static Python int"
        )
      num_groups = int(np.max(groups)) + 1
    num_groups = _checks.check_int("num_groups", num_groups, low=1)
    self.out_of_range = None  # under jit: whether some id is outside [0, num_groups) (the result is then NaN)
    if concrete:
      ids = np.asarray(groups)
      if ids.size and (ids.min() < 0 or ids.max() >= num_groups):
        raise ValueError(
          f"groups must hold ids in [0, num_groups) = [0, {num_groups}); got ids from {ids.min()} to {ids.max()}"
        )
      sizes = np.bincount(ids, minlength=num_groups)
      self.sizes = sizes
      length = max(int(sizes.max()), 1)
      order = np.argsort(ids, kind="stable")
      starts = np.cumsum(sizes) - sizes
      slot = np.arange(n) - starts[ids[order]]
      index = np.zeros((num_groups, length), np.int32)
      valid = np.zeros((num_groups, length), bool)
      index[ids[order], slot] = order
      valid[ids[order], slot] = True
      self.index, self.valid = jnp.asarray(index), jnp.asarray(valid)
    else:
      self.sizes = None
      length = max(n, 1)
      order = jnp.argsort(groups, stable=True)
      sorted_ids = groups[order]
      sizes = jnp.zeros(num_groups, jnp.int32).at[groups].add(1, mode="drop")
      starts = jnp.cumsum(sizes) - sizes
      slot = jnp.arange(n) - starts[jnp.clip(sorted_ids, 0, num_groups - 1)]
      in_range = (sorted_ids >= 0) & (sorted_ids < num_groups)
      row = jnp.where(in_range, sorted_ids, num_groups)  # out-of-range ids have no slot: the result is made NaN
      self.out_of_range = ~jnp.all(in_range)
      self.index = jnp.zeros((num_groups, length), jnp.int32).at[row, slot].set(order, mode="drop")
      self.valid = jnp.zeros((num_groups, length), bool).at[row, slot].set(True, mode="drop")
    self.num_groups, self.length = num_groups, length


def _soft_ranks_padded(
  x: jax.Array, valid: jax.Array, sizes: np.ndarray | None, epsilon: float, backend: Any, options: dict
) -> jax.Array:
  """Soft ranks of the valid entries of each row ``[g, length]``, as if each row held only those entries.

  ``pav``: the padding is set far above the row's maximum (more than ``length * epsilon`` above). The isotonic
  problem then never pools an entry with the padding, and the entries' ranks, which come first, are exactly
  those of the unpadded row, for both L2 and KL (the padding only ever takes the top ranks). ``sinkhorn``
  couples every entry with every target, so padding would change the result: rows of equal size are ranked
  together instead, which needs concrete group sizes.
  """
  length = x.shape[-1]
  if _contract.resolve(backend, options, "ranks")[0].name == "pav":
    top = jnp.max(jnp.where(valid, x, -jnp.inf), -1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0)
    pad = jax.lax.stop_gradient(top + 2 * (length + 1) * epsilon + 1)
    return _api.ranks(jnp.where(valid, x, pad), epsilon=epsilon, backend=backend, **options)
  if sizes is None:
    raise ValueError(
      f"groups= under jit needs backend='pav'; backend={backend!r} ranks a row against all its "
      "entries, so it cannot ignore padding and needs concrete group sizes: call it outside jit "
      "(the groups array as a NumPy array), or use backend='pav'"
    )
  out = jnp.zeros_like(x)
  for size in np.unique(sizes[sizes > 0]):
    rows = np.flatnonzero(sizes == size)
    out = out.at[rows, :size].set(_api.ranks(x[rows, :size], epsilon=epsilon, backend=backend, **options))
  return out


def _spearman_parts(
  pred: ArrayLike,
  target: ArrayLike,
  *,
  axis: Any,
  target_soft: Any,
  groups: Any,
  num_groups: Any,
  epsilon: Any,
  backend: Any,
  options: dict,
):
  """The unit-norm centred rank vectors ``u`` (of pred) and ``v`` (of target), in a ``[rows, length]`` layout with
  a validity mask, and per-row weights: the correlation of row i is ``sum(u[i] * v[i])``."""
  _checks.check_bool("target_soft", target_soft)
  epsilon = _default_epsilon(backend, epsilon)
  pred, target = _checks.as_array("pred", pred), _checks.as_array("target", target)
  _checks.check_real_dtype("pred", pred.dtype)
  _checks.check_real_dtype("target", target.dtype)
  _check_same_shape(pred, target)
  if pred.ndim == 0:
    raise ValueError("pred must have at least one dimension to rank along; got a scalar")
  axis = _checks.normalize_axis(axis, pred.ndim)
  if pred.shape[axis] == 0:
    raise ValueError(
      f"pred must hold at least one value along axis to correlate; got pred.shape = {pred.shape} with axis = {axis}"
    )
  dtype = _checks.float_dtypes(pred.dtype, "pred")[0]
  pred = jnp.moveaxis(pred.astype(dtype), axis, -1)
  target = jnp.moveaxis(target, axis, -1)
  target = target.astype(dtype)
  if groups is None:
    if num_groups is not None:
      raise ValueError(f"num_groups is only used with groups=; got num_groups = {num_groups!r} and groups = None")
    out_of_range = None
    valid = jnp.ones(pred.shape, bool)
    pred_ranks = _api.ranks(pred, epsilon=epsilon, backend=backend, **options)
    if target_soft:
      target_ranks = _api.ranks(target, epsilon=epsilon, backend=backend, **options)
    else:
      target_ranks = _hard_ranks(jax.lax.stop_gradient(target))
    weights = jnp.ones(pred.shape[:-1], dtype)
  else:
    if pred.ndim != 1:
      raise ValueError(f"groups= needs 1-D pred and target (one entry per example); got pred.shape = {pred.shape}")
    layout = _Groups(groups, num_groups, pred.shape[0])
    valid, out_of_range = layout.valid, layout.out_of_range
    # One epsilon for all groups (it sets the padding of every group), a number or a 0-d array, possibly traced.
    epsilon = _checks.epsilon_array(epsilon, (), 0, dtype)
    pred = jnp.where(valid, pred[layout.index], 0)
    target = jnp.where(valid, target[layout.index], 0)
    pred_ranks = _soft_ranks_padded(pred, valid, layout.sizes, epsilon, backend, options)
    if target_soft:
      target_ranks = _soft_ranks_padded(target, valid, layout.sizes, epsilon, backend, options)
    else:
      target_ranks = _hard_ranks(jnp.where(valid, jax.lax.stop_gradient(target), jnp.inf), valid)
    counts = valid.sum(-1)
    weights = (counts >= 2).astype(dtype)  # a group of fewer than 2 entries has no correlation
    weights = weights / jnp.maximum(weights.sum(), 1)
    if out_of_range is not None:  # an id outside [0, num_groups) under jit: NaN, not a silently dropped entry
      weights = jnp.where(out_of_range, jnp.nan, weights)
  return _safe_unit(pred_ranks, valid), _safe_unit(target_ranks, valid), weights, groups is not None


# ---------------------------------------------------------------------------------------------------------------
# Spearman


def spearman_correlation(
  pred: ArrayLike,
  target: ArrayLike,
  *,
  axis: int = -1,
  target_soft: bool = False,
  groups: ArrayLike | None = None,
  num_groups: int | None = None,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft Spearman rank correlation between ``pred`` and ``target``, differentiable in ``pred``.

  The Pearson correlation of the soft ranks of ``pred`` (:func:`otsort.ranks`) with the ranks of ``target``:

  .. math::

    \rho_\varepsilon(p, t) = \frac{\langle r_\varepsilon(p) - \bar r_\varepsilon, \; s(t) - \bar s\rangle}
    {\| r_\varepsilon(p) - \bar r_\varepsilon \| \, \| s(t) - \bar s \|},

  where :math:`s(t)` are the hard ranks of ``target`` with ties sharing the mean of their ranks (as
  ``scipy.stats.spearmanr``), or its soft ranks with ``target_soft=True``. As :math:`\varepsilon \to 0` it is
  the Spearman correlation; larger values give smoother, denser gradients. Soft ranks depend on the scale of
  ``pred`` divided by ``epsilon`` (``pav``), so choose ``epsilon`` relative to the spread of the predictions.
  A row whose ranks are constant has correlation 0 (``scipy`` returns NaN).

  With ``groups``, the correlation is computed within each group and averaged over the groups that hold at
  least two entries, as in era-wise scoring of financial predictions (Numerai's "correlation per era").

  Args:
    pred: predictions ``[..., n, ...]``, ranked along ``axis``.
    target: targets of the same shape.
    axis: the axis holding the ``n`` values to correlate.
    target_soft: also soft-rank ``target`` (then differentiable in ``target`` too); default: hard ranks, no
      gradient to ``target``.
    groups: optional integer group ids ``[n]`` in ``[0, num_groups)``, for 1-D ``pred`` and ``target``. Concrete
      ids are checked; under ``jit`` an id outside ``[0, num_groups)`` makes the result NaN.
    num_groups: the number of groups, a static int; required with ``groups`` under ``jit`` (otherwise inferred
      as ``max(groups) + 1``). Under ``jit`` with ``groups``, only ``backend="pav"`` works (see
      :func:`spearman_loss`).
    epsilon: regularization strength of the soft ranks, > 0; ``None`` picks the backend's default (``pav``:
      1.0, ``sinkhorn``: 1e-2). A number or an array, also traced (under ``jit`` changing it does not recompile;
      ``grad`` with respect to it works): without ``groups``, one value per row is allowed (broadcastable to
      ``pred``'s shape without ``axis``); with ``groups``, one value for all groups.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object (:class:`otsort.Pav`, :class:`otsort.Sinkhorn`).
    **options: backend options, as for :func:`otsort.ranks`.

  Returns:
    The correlations, in ``[-1, 1]``: ``pred``'s shape without ``axis``; a scalar with ``groups``.

  Example:
    >>> import otsort
    >>> round(float(otsort.losses.spearman_correlation([0.1, 0.4, 0.3], [1.0, 3.0, 2.0], epsilon=1e-3)), 4)
    1.0

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020 (soft Spearman
    for label ranking).
  """
  u, v, weights, grouped = _spearman_parts(
    pred,
    target,
    axis=axis,
    target_soft=target_soft,
    groups=groups,
    num_groups=num_groups,
    epsilon=epsilon,
    backend=backend,
    options=options,
  )
  corr = jnp.sum(u * v, -1)
  return jnp.sum(weights * corr) if grouped else corr


def spearman_loss(
  pred: ArrayLike,
  target: ArrayLike,
  *,
  axis: int = -1,
  target_soft: bool = False,
  groups: ArrayLike | None = None,
  num_groups: int | None = None,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""``1 - spearman_correlation(...)``: a loss in ``[0, 2]``, 0 when the ranks of ``pred`` match ``target``'s.

  Written as a least-squares residual of the unit-norm centred rank vectors :math:`u` (of ``pred``) and
  :math:`v` (of ``target``): :math:`1 - \rho = \tfrac12 \| u - v \|^2`, which is what
  :func:`spearman_grad_hess` uses for its Gauss-Newton Hessian. Arguments as for
  :func:`spearman_correlation`.

  With ``groups``, ``backend="sinkhorn"`` needs concrete ``groups`` (it ranks groups of equal size together;
  padding would change Sinkhorn's ranks), ``backend="pav"`` also works under ``jit`` (exactly: each group is
  padded far above its maximum, which never changes the ranks of its entries).

  Returns:
    ``pred``'s shape without ``axis``; a scalar with ``groups`` (the mean over groups of ``1 - rho``).

  Example:
    >>> import jax, jax.numpy as jnp, otsort
    >>> grad = jax.grad(otsort.losses.spearman_loss)(jnp.array([0.1, 0.4, 0.3]), jnp.array([1.0, 2.0, 3.0]))
  """
  return 1 - spearman_correlation(
    pred,
    target,
    axis=axis,
    target_soft=target_soft,
    groups=groups,
    num_groups=num_groups,
    epsilon=epsilon,
    backend=backend,
    **options,
  )


def spearman_grad_hess(
  pred: ArrayLike,
  target: ArrayLike,
  *,
  groups: ArrayLike | None = None,
  num_groups: int | None = None,
  target_soft: bool = False,
  hessian: str = "diagonal",
  num_probes: int = 16,
  seed: int = 0,
  normalize: bool = True,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
  r"""Per-example gradient and a positive diagonal Hessian of :func:`spearman_loss`, for gradient boosting.

  Gradient-boosting libraries fit each tree to per-example first and second derivatives of the loss. This
  returns them for the (grouped) Spearman loss of 1-D predictions as NumPy arrays.

  The gradient is exact (``jax.grad``). The Hessian of :math:`1 - \rho = \tfrac12 \|e(p)\|^2`, with
  :math:`e = u - v` the residual of unit-norm centred rank vectors, is replaced by its Gauss-Newton part
  :math:`G = J_e^\top J_e` (positive semi-definite; the dropped term :math:`\sum_k e_k \nabla^2 e_k` is
  indefinite and small near a good fit). Its diagonal :math:`G_{ii} = \mathbb{E}_z[(J_e^\top z)_i^2]` is
  estimated with ``num_probes`` Rademacher vectors :math:`z` (Hutchinson/Bekas et al.), each one
  vector-Jacobian product, so the cost is a few backward passes whatever ``n``:

  - ``hessian="diagonal"``: the per-entry estimate, floored at 1% of its mean over the entry's group (entries
    whose soft rank does not move, e.g. isolated blocks of the L2 projection, would get 0; the floor keeps
    Newton steps bounded).
  - ``hessian="constant"``: the mean of the diagonal over the entry's group (without ``groups``,
    :math:`\operatorname{tr}(G) / n`): a much less noisy estimate, i.e. one curvature scale per group.

  With ``normalize=True`` (default) both arrays are multiplied by the one constant per group (for the whole
  vector without ``groups``) that makes the group's mean Hessian 1: Newton leaf values :math:`-\sum g / \sum h`
  within a group do not change, and the boosting libraries' per-example
  defaults (xgboost ``min_child_weight=1``, ``reg_lambda=1``; lightgbm ``min_sum_hessian_in_leaf``) keep their
  usual meaning (for squared error the Hessian is 1 per example). With ``normalize=False`` they are the
  derivatives of ``spearman_loss`` itself. Every scale is taken within a group, so a group with a NaN or an
  infinity (whose gradient and Hessian are NaN) changes no other group's gradient or Hessian.

  To use it as a custom objective, see :func:`spearman_boosting_objective`.

  Args:
    pred: current predictions ``[n]`` (raw margins).
    target: targets ``[n]``.
    groups: optional integer group (era) ids ``[n]``: the loss is the mean over groups of ``1 - rho``.
    num_groups: number of groups (inferred from ``groups`` when omitted).
    target_soft: soft-rank the target too (see :func:`spearman_correlation`).
    hessian: ``"diagonal"`` or ``"constant"``.
    num_probes: number of random probes of the Gauss-Newton diagonal, >= 1.
    seed: seed of the probes (the result is deterministic for a given seed).
    normalize: scale gradient and Hessian so that the Hessian's mean is 1.
    epsilon: regularization strength of the soft ranks, one number; ``None``: the backend's default. Changing it
      between calls does not recompile.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object (:class:`otsort.Pav`, :class:`otsort.Sinkhorn`).
    **options: backend options.

  Returns:
    ``(grad, hess)``, two float64 NumPy arrays ``[n]``; ``hess > 0``.

  Example:
    >>> import numpy as np, otsort
    >>> grad, hess = otsort.losses.spearman_grad_hess(np.random.randn(100), np.random.randn(100))

  References:
    Chen, Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016 (second-order boosting).
    Bekas, Kokiopoulou, Saad, "An estimator for the diagonal of a matrix", Applied Numerical Mathematics, 2007.
  """
  _check_grad_hess_arguments(hessian, num_probes, normalize, epsilon, backend, options)
  seed = _checks.check_int("seed", seed)
  target_soft = _checks.check_bool("target_soft", target_soft)
  pred = _concrete_array("pred", pred)
  _checks.check_real_dtype("pred", pred.dtype)
  if not np.issubdtype(pred.dtype, np.floating):
    pred = pred.astype(np.float64)  # integer margins (e.g. a first boosting round) are ranked as floats
  if pred.ndim != 1:
    raise ValueError(f"pred must be 1-D, one prediction per example; got pred.shape = {pred.shape}")
  target = _concrete_array("target", target)
  _checks.check_real_dtype("target", target.dtype)
  _check_same_shape(pred, target)
  groups = None if groups is None else _concrete_array("groups", groups)  # concrete: any backend works
  epsilon = _default_epsilon(backend, epsilon)
  fn = _grad_and_probes(
    pred.shape[0], pred.dtype, groups, num_groups, bool(target_soft), int(num_probes), backend, options
  )
  grad, probes = fn(pred, target, jax.random.key(seed), epsilon)
  grad = np.asarray(grad, np.float64)
  diag = np.mean(np.asarray(probes, np.float64) ** 2, axis=0)
  # Entries of a group with a NaN or an infinity get NaN (its gradient is NaN already). The Hessian's floor, the
  # constant Hessian and the normalization are taken within each group (the whole vector without groups), so one
  # group's data, bad or not, changes no other group's gradient or Hessian.
  finite = np.isfinite(grad) & np.isfinite(diag)
  ids = np.zeros(grad.shape, np.int64) if groups is None else np.asarray(groups, np.int64)
  _, ids = np.unique(ids, return_inverse=True)
  ids = ids.reshape(grad.shape)
  bad_group = np.bincount(ids, ~finite) > 0
  finite = ~bad_group[ids]
  count = np.bincount(ids, finite)
  mean = np.bincount(ids, np.where(finite, diag, 0)) / np.maximum(count, 1)
  flat = mean <= 0  # no entry's rank moves (e.g. epsilon far below the gaps of pred): the gradient is 0 too
  mean = np.where(flat, 1.0, mean)
  diag = np.where(flat[ids], 1.0, diag)
  hess = mean[ids] if hessian == "constant" else np.maximum(diag, 0.01 * mean[ids])
  grad, hess = np.where(finite, grad, np.nan), np.where(finite, hess, np.nan)
  if normalize:
    scale = np.bincount(ids, np.where(finite, hess, 0)) / np.maximum(count, 1)
    scale = np.where(scale > 0, scale, 1.0)[ids]
    grad, hess = grad / scale, hess / scale
  return grad, hess


def _check_grad_hess_arguments(
  hessian: Any, num_probes: Any, normalize: Any, epsilon: Any, backend: Any, options: dict
) -> None:
  """The checks of :func:`spearman_grad_hess` that need no data, so that an objective can run them when it is made
  rather than at the first boosting round."""
  _checks.check_choice("hessian", hessian, _HESSIANS)
  _checks.check_int("num_probes", num_probes, low=1)
  _checks.check_bool("normalize", normalize)
  _contract.resolve(backend, options, "ranks")
  if epsilon is not None:
    _checks.epsilon_array(epsilon, np.shape(epsilon), 0, jnp.result_type(float))  # the type, then the one value
    if np.ndim(epsilon) != 0:
      raise ValueError(
        f"epsilon must be one number for the whole prediction vector; got an array of shape {np.shape(epsilon)}"
      )
    _checks.epsilon_array(epsilon, (), 0, jnp.result_type(float))


_GRAD_CACHE: dict[Any, Callable] = {}


def _grad_and_probes(
  n: int,
  dtype: Any,
  groups: np.ndarray | None,
  num_groups: Any,
  target_soft: bool,
  num_probes: int,
  backend: Any,
  options: dict,
) -> Callable:
  """A jitted ``(pred, target, key, epsilon) -> (grad, J^T z for num_probes probes z)``, cached per configuration
  so that a boosting loop, which calls it every round with the same groups, compiles it once (epsilon is an
  argument: changing it does not recompile either)."""
  try:
    key = (
      n,
      str(dtype),
      None if groups is None else (groups.dtype.str, groups.tobytes()),
      num_groups,
      target_soft,
      num_probes,
      backend,
      tuple(sorted(options.items())),
    )
    hash(key)
  except TypeError:  # an unhashable option value: compile without caching
    key = None
  if key is not None and key in _GRAD_CACHE:
    return _GRAD_CACHE[key]

  @jax.jit
  def fn(pred, target, rng, epsilon):

    def residual(p):
      u, v, weights, _ = _spearman_parts(
        p,
        target,
        axis=-1,
        target_soft=target_soft,
        groups=groups,
        num_groups=num_groups,
        epsilon=epsilon,
        backend=backend,
        options=options,
      )
      # 1/2 ||e||^2 = sum_g w_g (1 - rho_g) with sum_g w_g = 1 (ungrouped: one row, w = 1).
      return (u - v) * jnp.sqrt(weights)[..., None]

    e, vjp = jax.vjp(residual, pred)
    signs = jax.random.rademacher(rng, (num_probes, *e.shape), e.dtype)
    return vjp(e)[0], jax.vmap(lambda z: vjp(z)[0])(signs)

  if key is not None:
    if len(_GRAD_CACHE) >= 16:
      _GRAD_CACHE.pop(next(iter(_GRAD_CACHE)))
    _GRAD_CACHE[key] = fn
  return fn


def spearman_boosting_objective(
  *, groups: ArrayLike | None = None, **kwargs: Any
) -> Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]:
  r"""A custom objective ``obj(preds, data) -> (grad, hess)`` for xgboost and lightgbm, minimizing
  :func:`spearman_loss`.

  Both libraries' native training loops call a custom objective with the current raw predictions ``[n]`` and the
  training set, and expect the per-example gradient and Hessian ``[n]``:

  - xgboost: ``xgboost.train(params, dtrain, obj=obj)``, called as ``obj(preds, dtrain)``, ``dtrain`` an
    ``xgboost.DMatrix``.
  - lightgbm >= 4: ``lightgbm.train({"objective": obj, ...}, train_set)``, called as ``obj(preds, train_data)``,
    ``train_data`` a ``lightgbm.Dataset`` (lightgbm < 4: ``lightgbm.train(params, train_set, fobj=obj)``).

  The target is read with ``data.get_label()`` (both classes have it); ``data`` may also be the target array
  itself. The scikit-learn wrappers (``XGBRegressor(objective=...)``, ``LGBMRegressor(objective=...)``) call
  ``objective(y_true, y_pred)`` instead, arguments swapped: pass
  ``lambda y_true, y_pred: obj(y_pred, y_true)``. Neither library is a dependency of otsort.

  Args:
    groups: optional era ids ``[n]`` of the training rows, in the order of the training set.
    **kwargs: keyword arguments of :func:`spearman_grad_hess` (``epsilon``, ``hessian``, ``backend``, ...).

  Returns:
    ``obj(preds, data) -> (grad, hess)``.

  Example:
    >>> import numpy as np, otsort
    >>> obj = otsort.losses.spearman_boosting_objective(groups=np.array([0, 0, 0, 1, 1, 1]), epsilon=0.1)
    >>> grad, hess = obj(np.array([0.1, 0.4, 0.3, 0.2, 0.9, 0.5]), np.arange(6.0))  # (preds, data or labels)
    >>> grad.shape, bool(np.all(hess > 0))
    ((6,), True)

    With xgboost: ``xgboost.train({"tree_method": "hist"}, xgboost.DMatrix(X, y, base_margin=m0), 100, obj=obj)``.

  Start from predictions that are not all equal (``base_margin`` in xgboost, ``init_score`` of the
  ``lightgbm.Dataset``; e.g. ``m0 = 1e-2 * rng.standard_normal(n)`` or a simple model's predictions): at constant
  predictions every soft rank is tied, the correlation is 0 / 0 and its gradient vanishes (mean ``|grad|`` 3e-7
  with the Hessian's mean 1 on 12 eras of 120 rows), so boosting from the libraries' constant start does not move
  (xgboost's float32 margins round the first steps away; lightgbm creeps). ``tests/test_boosting.py`` trains
  both for 25 rounds on synthetic eras: held-out per-era Spearman 0.55 -> 0.75 (lightgbm, 4 leaves) and 0.64 ->
  0.83 (xgboost, depth 3) from round 1 to 25.
  """
  groups = None if groups is None else _concrete_array("groups", groups)
  if groups is not None and not np.issubdtype(groups.dtype, np.integer):
    raise TypeError(f"groups must hold integer group ids; got dtype {groups.dtype}")
  names = set(inspect.signature(spearman_grad_hess).parameters) - {"pred", "target", "groups", "options"}
  settings = {name: inspect.signature(spearman_grad_hess).parameters[name].default for name in names}
  settings.update({name: value for name, value in kwargs.items() if name in names})
  options = {name: value for name, value in kwargs.items() if name not in names}
  # Checked now: a misspelt keyword (it would be taken for a backend option) or a bad value fails here, not at the
  # first boosting round.
  _check_grad_hess_arguments(
    settings["hessian"],
    settings["num_probes"],
    settings["normalize"],
    settings["epsilon"],
    settings["backend"],
    options,
  )

  def objective(preds: np.ndarray, data: Any) -> tuple[np.ndarray, np.ndarray]:
    target = data.get_label() if hasattr(data, "get_label") else data
    return spearman_grad_hess(np.asarray(preds).reshape(-1), np.asarray(target).reshape(-1), groups=groups, **kwargs)

  return objective


# ---------------------------------------------------------------------------------------------------------------
# Classification


def soft_topk_error(
  logits: ArrayLike,
  labels: ArrayLike,
  k: int,
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft top-k error: a hinge on the soft rank of the true class against the top-k boundary, in [0, 1].

  With :math:`r_\varepsilon` the soft ranks of the logits in decreasing order (0 for the top class) and
  :math:`C` classes,

  .. math::

    \ell_\varepsilon(z, y) = \frac{\max(0, \; r_\varepsilon(z)_y - (k - 1))}{C - k}.

  As :math:`\varepsilon \to 0` the soft ranks are the hard ones: the loss is 0 exactly when the true class is
  among the k largest logits (the top-k 0/1 error is ``loss > 0``), and otherwise it grows with how many
  classes beat the boundary, from :math:`1/(C - k)` to 1, so it is bounded by the top-k error and bounds it
  times :math:`1/(C - k)`.

  Why a hinge on the rank rather than ``1 - topk_mask(z, k)[y]`` or a hinge capped at 1 (both exactly the 0/1
  error in the limit): those are flat for every example whose true class is clearly outside the top k, so the
  examples that most need a gradient get none (the L2 mask is sparse; a capped hinge saturates). On scikit-learn's
  digits (``tutorials/topk_classification.py``) a CNN trained on the capped hinge stays at chance (11%), on
  ``1 - topk_mask`` (L2, k = 1) at 59%, and on this loss at 96%. The rank keeps moving until the true class
  reaches the top k, which is the top-k loss of Cuturi et al. (2019) with soft ranks (Blondel et al., 2020).

  Args:
    logits: scores ``[..., C, ...]``, the classes along ``axis``.
    labels: integer class ids, ``logits``' shape without ``axis``, in ``[0, C)``. Concrete labels are checked;
      under ``jit`` a label outside ``[0, C)`` gives a NaN loss for its example.
    k: the number of top classes that count as correct, an int in ``[1, C]`` (``k = C``: the loss is 0).
    axis: the class axis.
    epsilon: regularization strength of the soft ranks, > 0; ``None`` picks the backend's default (``pav``:
      1.0, ``sinkhorn``: 1e-2). ``pav`` ranks depend on ``logits / epsilon``. A number, or one per example
      (broadcastable to ``labels``' shape), also traced.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object (:class:`otsort.Pav`, :class:`otsort.Sinkhorn`).
    **options: backend options, as for :func:`otsort.ranks`.

  Returns:
    The per-example losses, ``labels``' shape.

  Example:
    >>> import otsort
    >>> otsort.losses.soft_topk_error([[1.0, 3.0, 2.0]], [2], 2, epsilon=1e-3)
    Array([0.], dtype=float32)

  References:
    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019.
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
    Berrada, Zisserman, Kumar, "Smooth Loss Functions for Deep Top-k Classification", ICLR 2018.
    Petersen, Kuehne, Borgelt, Deussen, "Differentiable Top-k Classification Learning", ICML 2022.
  """
  logits = _checks.as_array("logits", logits)
  _checks.check_real_dtype("logits", logits.dtype)
  if logits.ndim == 0:
    raise ValueError("logits must have a class axis; got a scalar")
  axis = _checks.normalize_axis(axis, logits.ndim)
  num_classes = logits.shape[axis]
  if num_classes < 2:
    raise ValueError(f"logits must hold at least 2 classes along axis; got logits.shape[axis] = {num_classes}")
  k = _checks.check_int("k", k, low=1, high=num_classes, where=f"with C = logits.shape[axis] = {num_classes}")
  concrete = _is_concrete(labels)
  labels = _concrete_array("labels", labels) if concrete else labels  # NumPy stays NumPy (and concrete) under jit
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integer class ids; got dtype {labels.dtype}")
  batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
  if labels.shape != batch_shape:
    raise ValueError(
      f"labels must have logits' shape without the class axis, {batch_shape}; got labels.shape = "
      f"{labels.shape} (logits.shape = {logits.shape}, axis = {axis})"
    )
  if concrete and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    raise ValueError(f"labels must be class ids in [0, C) = [0, {num_classes}); got {bad.ravel()[0]}")
  labels = jnp.asarray(labels)
  ranks = _api.ranks(logits, axis=axis, descending=True, epsilon=epsilon, backend=backend, **options)
  ranks = jnp.moveaxis(ranks, axis, -1)
  onehot = labels[..., None] == jnp.arange(num_classes)
  true_rank = jnp.sum(jnp.where(onehot, ranks, 0), -1)
  true_rank = jnp.where(jnp.any(onehot, -1), true_rank, jnp.nan)  # an out-of-range label under jit
  if k == num_classes:
    return jnp.zeros_like(true_rank)
  return jnp.maximum(true_rank - (k - 1), 0) / (num_classes - k)


def soft_error(
  logits: ArrayLike,
  labels: ArrayLike,
  *,
  axis: int = -1,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft 0/1 error: the soft rank of the true class counted from the top, divided by ``C - 1``, in [0, 1].

  :math:`\ell_\varepsilon(z, y) = r_\varepsilon(z)_y / (C - 1)` with :math:`r_\varepsilon` the decreasing soft
  ranks; this is :func:`soft_topk_error` with ``k = 1``. As :math:`\varepsilon \to 0` it is 0 exactly when the
  true class has the largest logit (the 0/1 error is ``loss > 0``) and otherwise the hard rank over ``C - 1``:
  ``zero_one / (C - 1) <= loss <= zero_one``. See :func:`soft_topk_error` for why it is not capped at 1.

  Args:
    logits: scores ``[..., C, ...]``, the classes along ``axis``.
    labels: integer class ids in ``[0, C)``, ``logits``' shape without ``axis``; under ``jit`` a label outside
      ``[0, C)`` gives a NaN loss for its example.
    axis: the class axis.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object (:class:`otsort.Pav`, :class:`otsort.Sinkhorn`).
    **options: backend options.

  Returns:
    The per-example losses, ``labels``' shape.

  Example:
    >>> import otsort
    >>> otsort.losses.soft_error([[1.0, 3.0, 2.0]], [2], epsilon=1e-3)
    Array([0.5], dtype=float32)

  References:
    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019.
  """
  return soft_topk_error(logits, labels, 1, axis=axis, epsilon=epsilon, backend=backend, **options)


# ---------------------------------------------------------------------------------------------------------------
# Ranking (learning to rank): NDCG, average precision, recall@k
#
# Conventions of rax (and optax's ranking losses): ``scores`` and ``labels`` are ``[..., n]``, one list of n items
# per row along the last axis; an item is relevant when its label is >= 1; ``where`` marks the valid items;
# ``reduce_fn`` reduces the per-list values over the lists that hold at least one valid item.


def _ranking_inputs(
  scores: Any, labels: Any, where: Any, weights: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  """(scores, labels, valid, weights) checked: real arrays ``[..., n]`` of one shape, ``where`` boolean."""
  scores = _checks.as_array("scores", scores)
  _checks.check_real_dtype("scores", scores.dtype)
  if scores.ndim == 0:
    raise ValueError("scores must have a list axis (the last), [..., n]; got a scalar")
  dtype = _checks.float_dtypes(scores.dtype, "scores")[0]
  scores = scores.astype(dtype)
  labels = _checks.as_array("labels", labels)
  _checks.check_real_dtype("labels", labels.dtype)
  if labels.shape != scores.shape:
    raise ValueError(f"labels must have scores' shape {scores.shape}; got labels.shape = {labels.shape}")
  labels = labels.astype(dtype)
  if where is None:
    valid = jnp.ones(scores.shape, bool)
  else:
    valid = _checks.as_array("where", where)
    if valid.dtype != jnp.bool_:
      raise TypeError(f"where must be a boolean array (True: a valid item); got dtype {valid.dtype}")
    if valid.shape != scores.shape:
      raise ValueError(f"where must have scores' shape {scores.shape}; got where.shape = {valid.shape}")
  if weights is not None:
    weights = _checks.as_array("weights", weights)
    _checks.check_real_dtype("weights", weights.dtype)
    try:
      weights = jnp.broadcast_to(weights, scores.shape).astype(dtype)
    except ValueError:
      raise ValueError(
        f"weights must be broadcastable to scores' shape {scores.shape}; got weights.shape = {weights.shape}"
      ) from None
  return scores, labels, valid, weights


def _check_topn(topn: Any, *, required: bool = False) -> int | None:
  if topn is None and not required:
    return None
  return _checks.check_int("topn", topn, low=1)


def _check_reduce_fn(reduce_fn: Any) -> Callable | None:
  if reduce_fn is not None and not callable(reduce_fn):
    raise TypeError(
      f"reduce_fn must be None or a function such as jnp.mean or jnp.sum; got reduce_fn = {_checks.show(reduce_fn)}"
    )
  return reduce_fn


def _check_masking_backend(name: str, backend: Any, options: dict, op: str) -> None:
  """``ValueError`` unless ``backend`` is ``pav``: only its ranks can ignore the masked items exactly."""
  if _contract.resolve(backend, options, op)[0].name != "pav":
    raise ValueError(
      f"{name} needs backend='pav'; got backend={backend!r}. The sinkhorn backend couples every item with every "
      "target, so masked items would change the valid items' ranks; masks on sinkhorn need the operations' own "
      "where= argument (coming)"
    )


def _padded_below(scores: jax.Array, valid: jax.Array, epsilon: Any, backend: Any) -> jax.Array:
  """``scores`` with the invalid items set far below every valid one: more than ``2 (n + 1) epsilon + 1`` below
  the row's smallest valid score, so that the isotonic problems behind ``pav``'s ranks and top-k masks (L2 and KL)
  never pool a valid item with an invalid one, and the valid items' results are exactly those of the valid items
  alone (see :func:`_soft_ranks_padded`, which pads above). The padding carries no gradient."""
  n = scores.shape[-1]
  eps = _checks.epsilon_array(_default_epsilon(backend, epsilon), scores.shape[:-1], scores.ndim - 1, scores.dtype)
  eps = jnp.abs(eps)[..., None]  # one per list, [..., 1]
  low = jnp.min(jnp.where(valid, scores, jnp.inf), -1, keepdims=True)
  low = jnp.where(jnp.isfinite(low), low, 0)
  pad = jax.lax.stop_gradient(low - 2 * (n + 1) * eps - 1)
  return jnp.where(valid, scores, pad)


def _valid_ranks(
  scores: jax.Array, valid: jax.Array, epsilon: Any, backend: Any, options: dict, masked: bool
) -> jax.Array:
  """1-based decreasing soft ranks (rank 1: the highest score) of the valid items among the valid items only;
  the invalid items' entries are meaningless (callers mask them). ``masked``: whether any item may be invalid
  (then the backend must be ``pav``)."""
  if masked:
    scores = _padded_below(scores, valid, epsilon, backend)
  return 1 + _api.ranks(scores, descending=True, epsilon=epsilon, backend=backend, **options)


def _valid_topk_mask(
  scores: jax.Array, valid: jax.Array, k: int, epsilon: Any, backend: Any, options: dict, masked: bool
) -> jax.Array:
  """The soft mask of the ``k`` highest valid scores among the valid items only (all of them, exactly 1, in a
  list with at most ``k`` valid items), 0 on invalid items."""
  n = scores.shape[-1]
  if k >= n:
    return valid.astype(scores.dtype)
  if masked:
    scores = _padded_below(scores, valid, epsilon, backend)
  mask = _api.topk_mask(scores, k, epsilon=epsilon, backend=backend, **options)
  return jnp.where(valid, mask, 0)


def _reduce_lists(values: jax.Array, valid: jax.Array, reduce_fn: Callable | None) -> jax.Array:
  """rax's reduction: over the lists with a valid item; ``None`` keeps ``[...]`` with 0 for the other lists."""
  lists = jnp.any(valid, -1)
  if reduce_fn is None:
    return jnp.where(lists, values, 0)
  out = reduce_fn(values, where=lists)
  if reduce_fn is jnp.mean:  # no list with a valid item: 0, not NaN (a NaN among the values stays NaN)
    out = jnp.where(jnp.any(lists) | jnp.any(jnp.isnan(values)), out, 0)
  return out


def _ranking_setup(name, scores, labels, where, weights, epsilon, backend, reduce_fn, options):
  scores, labels, valid, weights = _ranking_inputs(scores, labels, where, weights)
  reduce_fn = _check_reduce_fn(reduce_fn)
  if where is not None:
    _check_masking_backend(f"{name}(..., where=...)", backend, options, "ranks")
  return scores, labels, valid, weights, reduce_fn


def ndcg_loss(
  scores: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  weights: ArrayLike | None = None,
  topn: int | None = None,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  reduce_fn: Callable[..., jax.Array] | None = jnp.mean,
  **options: Any,
) -> jax.Array:
  r"""Soft NDCG loss: one minus the normalized discounted cumulative gain of soft ranks.

  With :math:`r_\varepsilon(s)` the decreasing soft ranks of the scores, 1-based (rank 1: the highest score),
  gains :math:`g_i = (2^{y_i} - 1) w_i` and :math:`m_\varepsilon(s)` the soft top-``topn`` mask of the scores
  (all ones without ``topn``),

  .. math::

    \ell_\varepsilon(s, y) = 1 - \frac{1}{\mathrm{IDCG}} \sum_i \frac{g_i \, m_\varepsilon(s)_i}
      {\log_2(1 + r_\varepsilon(s)_i)},

  where IDCG, the DCG of the best ordering (the gains sorted in decreasing order, cut at ``topn``), is computed
  exactly from the labels; a list whose IDCG is 0 (no gain) has NDCG 0, as in rax. As :math:`\varepsilon \to 0`
  the soft ranks and mask are the hard ones and the loss is ``1 - rax.ndcg_metric`` (NDCG@topn). The loss is
  ``1 - NDCG`` rather than ``-NDCG`` so that it lies in [0, 1] and is 0 for a perfect ranking; the gradients are
  the same.

  ``where``: the masked items are ranked after every valid item with a gap that keeps ``pav``'s isotonic problems
  apart, so the valid items' soft ranks and mask are exactly those of the list of the valid items alone (L2 and
  KL); ``backend="sinkhorn"`` with ``where`` raises ``ValueError`` (its transport couples every item with every
  target: masks on it need the operations' own ``where=``, which is coming).

  Args:
    scores: the scores ``[..., n]``, one list per row (the last axis).
    labels: relevance labels ``[..., n]`` (graded, e.g. 0 to 4).
    where: optional boolean mask ``[..., n]`` of the valid items.
    weights: optional per-item weights of the gains, broadcastable to ``[..., n]``.
    topn: cut the DCG (and IDCG) at the ``topn`` highest scores: an int >= 1, or ``None`` (no cut).
    epsilon: regularization strength of the soft ranks and mask, > 0, in the units of the scores; ``None``
      picks the backend's default (``pav``: 1.0). A number, or one per list (``[...]``).
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object.
    reduce_fn: ``jnp.mean`` (default) or ``jnp.sum`` over the lists with a valid item, or ``None``: the
      per-list losses ``[...]`` (0 for a list without a valid item).
    **options: backend options, as for :func:`otsort.ranks`.

  Returns:
    A scalar, or ``[...]`` with ``reduce_fn=None``.

  Example:
    >>> import otsort
    >>> scores, labels = [[0.3, 2.0, 1.0]], [[1.0, 2.0, 0.0]]
    >>> float(otsort.losses.ndcg_loss(scores, labels, epsilon=1e-3))  # 1 - (3 + 1/2) / (3 + 1/log2(3))
    0.0360...
    >>> float(otsort.losses.ndcg_loss(scores, labels, epsilon=1.0)) > 0.0361  # soft ranks: a worse NDCG
    True

  References:
    Järvelin, Kekäläinen, "Cumulated Gain-Based Evaluation of IR Techniques", ACM TOIS 20(4), 2002.
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  scores, labels, valid, weights, reduce_fn = _ranking_setup(
    "ndcg_loss", scores, labels, where, weights, epsilon, backend, reduce_fn, options
  )
  topn = _check_topn(topn)
  masked = where is not None
  gains = jnp.power(2.0, labels) - 1
  if weights is not None:
    gains = gains * weights
  ranks = _valid_ranks(scores, valid, epsilon, backend, options, masked)
  cut = valid.astype(scores.dtype)
  if topn is not None:
    cut = _valid_topk_mask(scores, valid, topn, epsilon, backend, options, masked)
  dcg = jnp.sum(jnp.where(valid, gains * cut / jnp.log2(1 + ranks), 0), -1)
  # The ideal DCG: the valid gains in decreasing order (the invalid ones last), cut at topn.
  n = scores.shape[-1]
  best = -jnp.sort(jnp.where(valid, -gains, jnp.inf), -1)
  position = jnp.arange(1, n + 1, dtype=scores.dtype)
  keep = position <= (n if topn is None else topn)
  ideal = jnp.sum(jnp.where(jnp.isfinite(best) & keep, best / jnp.log2(1 + position), 0), -1)
  ndcg = dcg / jnp.where(ideal == 0, 1, ideal)
  return _reduce_lists(1 - ndcg, valid, reduce_fn)


def ap_loss(
  scores: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  topn: int | None = None,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  reduce_fn: Callable[..., jax.Array] | None = jnp.mean,
  **options: Any,
) -> jax.Array:
  r"""Soft average-precision loss: one minus the average precision of soft ranks.

  An item is relevant when its label is >= 1 (:math:`R`, the relevant valid items). With
  :math:`r_\varepsilon(s)` the decreasing soft ranks of all valid items and :math:`r^R_\varepsilon(s)` those
  among the relevant items only (both 1-based), the precision at the rank of a relevant item :math:`i` is
  :math:`r^R_i / r_i` (relevant items at or above :math:`i`, over all items at or above :math:`i`), and

  .. math::

    \ell_\varepsilon(s, y) = 1 - \frac{1}{\max(|R|, 1)} \sum_{i \in R} m_\varepsilon(s)_i \,
      \frac{r^R_\varepsilon(s)_i}{r_\varepsilon(s)_i},

  with :math:`m_\varepsilon(s)` the soft top-``topn`` mask (all ones without ``topn``). As
  :math:`\varepsilon \to 0` this is ``1 - rax.ap_metric`` (AP@topn, divided by the number of relevant items, as
  rax does). Both soft ranks are differentiable (``rax.ap_metric`` with a soft ``rank_fn`` compares ranks with
  a hard ``>=``, so only its ``1 / r_i`` has a gradient). ``1 - AP`` lies in [0, 1]; its gradients are those of
  ``-AP``. ``where``: as for :func:`ndcg_loss`, exact. The ranks among the relevant items are those of a masked
  list, so this loss needs ``backend="pav"`` (``"sinkhorn"`` raises ``ValueError``).

  Args:
    scores: the scores ``[..., n]``, one list per row (the last axis).
    labels: relevance labels ``[..., n]``; >= 1 is relevant.
    where: optional boolean mask ``[..., n]`` of the valid items.
    topn: count only the ``topn`` highest scores: an int >= 1, or ``None``.
    epsilon: regularization strength, > 0, in the units of the scores; ``None`` picks the backend's default.
    backend: ``"pav"`` or a :class:`otsort.Pav` object.
    reduce_fn: ``jnp.mean`` (default), ``jnp.sum`` or ``None`` (per-list losses ``[...]``), as for
      :func:`ndcg_loss`.
    **options: ``pav`` options, as for :func:`otsort.ranks`.

  Returns:
    A scalar, or ``[...]`` with ``reduce_fn=None``.

  Example:
    >>> import otsort
    >>> scores, labels = [[0.3, 2.0, 1.0]], [[1.0, 1.0, 0.0]]
    >>> float(otsort.losses.ap_loss(scores, labels, epsilon=1e-3))  # 1 - (1/1 + 2/3) / 2
    0.1666...

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  scores, labels, valid, _, reduce_fn = _ranking_setup(
    "ap_loss", scores, labels, where, None, epsilon, backend, reduce_fn, options
  )
  topn = _check_topn(topn)
  masked = where is not None
  relevant = valid & (labels >= 1)
  _check_masking_backend("ap_loss", backend, options, "ranks")  # the ranks among the relevant items mask the others
  ranks = _valid_ranks(scores, valid, epsilon, backend, options, masked)
  relevant_ranks = _valid_ranks(scores, relevant, epsilon, backend, options, True)
  cut = valid.astype(scores.dtype)
  if topn is not None:
    cut = _valid_topk_mask(scores, valid, topn, epsilon, backend, options, masked)
  precision = jnp.where(relevant, cut * relevant_ranks / ranks, 0)
  ap = jnp.sum(precision, -1) / jnp.maximum(jnp.sum(relevant, -1), 1)
  return _reduce_lists(1 - ap, valid, reduce_fn)


def recall_loss(
  scores: ArrayLike,
  labels: ArrayLike,
  *,
  topn: int,
  where: ArrayLike | None = None,
  epsilon: ArrayLike | None = None,
  backend: str | Backend = "pav",
  reduce_fn: Callable[..., jax.Array] | None = jnp.mean,
  **options: Any,
) -> jax.Array:
  r"""Soft recall@k loss: one minus the fraction of the relevant items inside the soft top-``topn`` mask.

  With :math:`m_\varepsilon(s)` the soft top-k mask of the scores (:func:`otsort.topk_mask`, ``k = topn``) and
  :math:`R` the relevant valid items (label >= 1),

  .. math::

    \ell_\varepsilon(s, y) = 1 - \frac{1}{\max(|R|, 1)} \sum_{i \in R} m_\varepsilon(s)_i .

  As :math:`\varepsilon \to 0` this is ``1 - rax.recall_metric(..., topn=topn)``; a list with at most ``topn``
  valid items retrieves all of them (mask exactly 1), a list without a relevant item has recall 0. With
  ``pav`` and L2 the mask is sparse: exactly 0 or 1 away from the ``topn``-th score, so only items near the
  boundary get gradients. ``where``: as for :func:`ndcg_loss` (exact on ``pav``; ``ValueError`` on ``sinkhorn``).

  Args:
    scores: the scores ``[..., n]``, one list per row (the last axis).
    labels: relevance labels ``[..., n]``; >= 1 is relevant.
    topn: the cutoff k, an int >= 1 (required).
    where: optional boolean mask ``[..., n]`` of the valid items.
    epsilon: regularization strength, > 0, in the units of the scores; ``None`` picks the backend's default.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object.
    reduce_fn: ``jnp.mean`` (default), ``jnp.sum`` or ``None`` (per-list losses ``[...]``), as for
      :func:`ndcg_loss`.
    **options: backend options, as for :func:`otsort.topk_mask`.

  Returns:
    A scalar, or ``[...]`` with ``reduce_fn=None``.

  Example:
    >>> import otsort
    >>> scores, labels = [[0.3, 2.0, 1.0, -1.0]], [[1.0, 1.0, 0.0, 0.0]]
    >>> otsort.losses.recall_loss(scores, labels, topn=2, epsilon=1e-3)  # item 0 is third: recall@2 = 1/2
    Array(0.5, dtype=float32)

  References:
    Sander, Puigcerver, Djolonga, Peyré, Blondel, "Fast, Differentiable and Sparse Top-k", ICML 2023.
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """
  scores, labels, valid, _, reduce_fn = _ranking_setup(
    "recall_loss", scores, labels, where, None, epsilon, backend, reduce_fn, options
  )
  topn = _check_topn(topn, required=True)
  masked = where is not None
  relevant = valid & (labels >= 1)
  mask = _valid_topk_mask(scores, valid, topn, epsilon, backend, options, masked)
  recall = jnp.sum(jnp.where(relevant, mask, 0), -1) / jnp.maximum(jnp.sum(relevant, -1), 1)
  return _reduce_lists(1 - recall, valid, reduce_fn)
