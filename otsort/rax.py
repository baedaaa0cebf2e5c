r"""Soft ranks and top-k cutoffs for `rax <https://github.com/google/rax>`_'s ranking metrics.

rax computes its metrics (``ndcg_metric``, ``dcg_metric``, ``mrr_metric``, ``precision_metric``,
``recall_metric``, ``ap_metric``, ...) from a ``rank_fn`` and a ``cutoff_fn`` that it takes as arguments. The
two factories here return otsort's soft versions, so that a metric becomes differentiable:

.. code-block:: python

  import rax, otsort
  soft_ndcg = rax.ndcg_metric(scores, labels, topn=5,
                              rank_fn=otsort.rax.rank_fn(epsilon=0.1),
                              cutoff_fn=otsort.rax.cutoff_fn(epsilon=0.1))

This module does not import rax (it is not a dependency of otsort); the functions follow the signatures of
``rax.utils.ranks`` / ``rax.utils.approx_ranks`` and ``rax.utils.cutoff`` / ``rax.utils.approx_cutoff``:

- ``rank_fn(scores, *, where=None, segments=None, key=None)``: 1-based ranks along the last axis, the highest
  score first (rank 1), as ``1 + otsort.ranks(scores, descending=True)``;
- ``cutoff_fn(a, n=None, *, where=None, segments=None)``: the soft mask of the ``n`` largest entries of ``a``
  along the last axis, :func:`otsort.topk_mask` (rax's metrics call it on ``-ranks``).

As epsilon tends to 0 both are the hard ``rax.utils.ranks`` and ``rax.utils.cutoff`` on lists without ties, and
each metric tends to rax's own (``ndcg_metric`` computes its ideal DCG with rax's hard ranks in any case).
rax's ``ap_metric`` compares ranks with a hard ``>=``, so with a soft ``rank_fn`` its gradient flows only through
``1 / rank``; :func:`otsort.losses.ap_loss` uses soft ranks among the relevant items instead.

Masks (``where``) and scores of ``-inf`` (rax's "not retrieved") with ``backend="pav"``: ``rank_fn`` ranks the
valid, finite-scored items as if the list held only them (the others are set far below them, more than
``2 (n + 1) epsilon + 1``, which keeps ``pav``'s isotonic problems apart, for L2 and KL: the valid items'
ranks are exactly those of the shorter list, not an approximation) and gives the others rank ``+inf``, after
every valid item, as rax's own ``ranks`` puts them last. rax's metrics mask those items' gains themselves and
read their ranks only in the cutoff and in ``ap_metric``'s comparisons, where ``+inf`` is exactly "last";
``cutoff_fn`` gives the entries of ``a`` equal to ``-inf`` (``-rank`` of those items) mask 0, and the other
entries exactly the mask of the list without them, for any epsilon. ``backend="sinkhorn"`` couples every item
with every target, so it cannot ignore items exactly: ``rank_fn`` then refuses ``where`` (``ValueError``; the
operations' own ``where=`` argument is coming) and passes ``-inf`` scores to the operation as they are.
``segments`` is not supported (``ValueError``); ``key`` (rax's random tie breaking) is ignored: soft ranks
share ties.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from otsort import _api
from otsort import _checks
from otsort import _contract
from otsort import losses
from otsort._contract import Backend

__all__ = ["cutoff_fn", "rank_fn"]


def _refuse_segments(segments: Any) -> None:
  if segments is not None:
    raise ValueError(
      "segments= is not supported by otsort.rax's rank_fn and cutoff_fn; got segments not None. Put each "
      "segment in a list of its own ([..., n], padded and masked with where=)"
    )


def _is_pav(backend: Any, options: dict, op: str) -> bool:
  return _contract.resolve(backend, options, op)[0].name == "pav"


def _as_scores(name: str, value: Any) -> jax.Array:
  array = _checks.as_array(name, value)
  _checks.check_real_dtype(name, array.dtype)
  if array.ndim == 0:
    raise ValueError(f"{name} must have a list axis (the last), [..., n]; got a scalar")
  return array.astype(_checks.float_dtypes(array.dtype, name)[0])


def _as_where(where: Any, shape: tuple[int, ...]) -> jax.Array:
  where = _checks.as_array("where", where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"where must be a boolean array (True: a valid item); got dtype {where.dtype}")
  if where.shape != shape:
    raise ValueError(f"where must have scores' shape {shape}; got where.shape = {where.shape}")
  return where


def rank_fn(
  *, epsilon: ArrayLike | None = None, backend: str | Backend = "pav", **options: Any
) -> Callable[..., jax.Array]:
  r"""A soft ``rank_fn`` for rax's metrics: 1-based decreasing soft ranks, :math:`1 + r_\varepsilon(-s)`.

  Args:
    epsilon: regularization strength of :func:`otsort.ranks`, > 0, in the units of the scores; ``None``
      picks the backend's default (``pav``: 1.0, ``sinkhorn``: 1e-2).
    backend: ``"pav"`` (the default), ``"sinkhorn"`` or a backend object.
    **options: backend options, as for :func:`otsort.ranks`.

  Returns:
    ``ranks(scores, *, where=None, segments=None, key=None)``: ``scores [..., n]`` to ranks ``[..., n]`` in
    ``[1, n]``, rank 1 for the highest score; with ``where`` (``[..., n]`` booleans) or ``-inf`` scores on
    ``pav``, the valid items ranked among themselves (exactly) and the others ``+inf`` (see the module's
    docstring).

  Example:
    >>> import jax.numpy as jnp
    >>> import otsort
    >>> ranks = otsort.rax.rank_fn(epsilon=1e-3)
    >>> ranks(jnp.array([0.5, 2.0, 1.0]))
    Array([3., 1., 2.], dtype=float32)
    >>> ranks(jnp.array([0.5, 2.0, 1.0]), where=jnp.array([True, False, True]))
    Array([ 2., inf,  1.], dtype=float32)
  """
  pav = _is_pav(backend, options, "ranks")  # checks the backend and its options now, not at the first call

  def ranks(scores: ArrayLike, *, where: ArrayLike | None = None, segments: Any = None, key: Any = None):
    del key  # rax's random tie breaking: soft ranks share ties
    _refuse_segments(segments)
    scores = _as_scores("scores", scores)
    if not pav:
      if where is not None:
        raise ValueError(
          f"rank_fn(backend={backend!r}) cannot take where=: the sinkhorn backend couples every item with every "
          "target, so masked items would change the valid items' ranks. Use backend='pav', or wait for the "
          "operations' own where= argument (coming)"
        )
      return 1 + _api.ranks(scores, descending=True, epsilon=epsilon, backend=backend, **options)
    valid = ~jnp.isneginf(scores)
    if where is not None:
      valid = valid & _as_where(where, scores.shape)
    soft = losses._valid_ranks(scores, valid, epsilon, backend, options, True)
    return jnp.where(valid, soft, jnp.inf)

  return ranks


def cutoff_fn(
  *, epsilon: ArrayLike | None = None, backend: str | Backend = "pav", **options: Any
) -> Callable[..., jax.Array]:
  r"""A soft ``cutoff_fn`` for rax's metrics: the soft top-``n`` mask :func:`otsort.topk_mask`.

  rax calls ``cutoff_fn(-ranks, n=topn)``: with the ranks of :func:`rank_fn` (spaced by about 1 in the hard
  limit), an ``epsilon`` below 1 keeps the cutoff close to the hard one.

  Args:
    epsilon: regularization strength of :func:`otsort.topk_mask`, > 0, in the units of ``a``; ``None`` picks
      the backend's default.
    backend: ``"pav"`` (the default), ``"sinkhorn"`` or a backend object.
    **options: backend options, as for :func:`otsort.topk_mask`.

  Returns:
    ``cutoff(a, n=None, *, where=None, segments=None)``: ``a [..., n_items]`` to a mask of its shape with values
    in [0, 1]: ones for ``n=None``, zeros for ``n=0``, exactly ones on the valid entries of a list with at most
    ``n`` of them (as rax); entries that ``where`` masks or that equal ``-inf`` get 0, and on ``pav`` the other
    entries exactly the mask of the list without them.

  Example:
    >>> import jax.numpy as jnp
    >>> import otsort
    >>> cutoff = otsort.rax.cutoff_fn(epsilon=1e-3)
    >>> cutoff(jnp.array([0.5, 2.0, 1.0]), 2)
    Array([0., 1., 1.], dtype=float32)
  """
  pav = _is_pav(backend, options, "topk_mask")

  def cutoff(a: ArrayLike, n: int | None = None, *, where: ArrayLike | None = None, segments: Any = None):
    _refuse_segments(segments)
    a = _as_scores("a", a)
    if n is None:
      return jnp.ones_like(a)
    n = _checks.check_int("n", n, low=0)
    if n == 0:
      return jnp.zeros_like(a)
    valid = ~jnp.isneginf(a) if pav else jnp.ones(a.shape, bool)
    if where is not None:
      if not pav:
        raise ValueError(
          f"cutoff_fn(backend={backend!r}) cannot take where=: the sinkhorn backend couples every item with every "
          "target. Use backend='pav', or wait for the operations' own where= argument (coming)"
        )
      valid = valid & _as_where(where, a.shape)
    return losses._valid_topk_mask(a, valid, n, epsilon, backend, options, pav)

  return cutoff
