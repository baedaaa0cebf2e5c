"""``otsort.losses.ndcg_loss``, ``ap_loss`` and ``recall_loss``: the hard limit is the hard metric (a NumPy
reference and rax's), working epsilons give finite, non-zero gradients that match finite differences, masks
(``where``) are exact, reductions follow rax, and batches and jit agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otsort import losses

BATCH, N = 5, 10
HARD = 1e-6  # the scores below are more than 10 HARD apart: the soft ranks and masks are the hard ones
LOSSES = ["ndcg_loss", "ap_loss", "recall_loss"]
PAV = [pytest.param({"regularization": "l2"}, id="l2"), pytest.param({"regularization": "kl"}, id="kl")]


def _lists(seed: int):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(BATCH, N)).astype(np.float32)
  assert np.min(np.diff(np.sort(scores, -1), axis=-1)) > 10 * HARD
  labels = rng.integers(0, 4, size=(BATCH, N)).astype(np.float32)  # graded, with ties
  labels[2] = 0  # a list without a relevant item
  where = rng.uniform(size=(BATCH, N)) < 0.7
  where[0] = True
  where[1, :] = False  # a list with one valid item
  where[1, 4] = True
  where[3, :] = False  # a list without a valid item
  weights = rng.uniform(0.5, 2, size=(BATCH, N)).astype(np.float32)
  return scores, labels, where, weights


# NumPy references: one list, its valid items only; rank 1 is the highest score.


def _ndcg(s, y, topn, w=None):
  gains = (2.0**y - 1) * (1 if w is None else w)
  k = len(s) if topn is None else min(topn, len(s))
  discounts = 1 / np.log2(np.arange(2, len(s) + 2))
  dcg = np.sum(gains[np.argsort(-s)][:k] * discounts[:k])
  ideal = np.sum(np.sort(gains)[::-1][:k] * discounts[:k])
  return dcg / ideal if ideal else 0.0


def _ap(s, y, topn):
  relevant = (y >= 1)[np.argsort(-s)]
  k = len(s) if topn is None else min(topn, len(s))
  precision = np.cumsum(relevant) / np.arange(1, len(s) + 1)
  return np.sum((precision * relevant)[:k]) / max(relevant.sum(), 1)


def _recall(s, y, topn):
  relevant = (y >= 1)[np.argsort(-s)]
  return relevant[:topn].sum() / max(relevant.sum(), 1)


def _reference(name, scores, labels, where, topn, weights=None):
  out = []
  for i in range(len(scores)):
    v = where[i]
    if not v.any():
      out.append(0.0)  # reduce_fn=None: 0 for a list without a valid item
      continue
    s, y = scores[i][v], labels[i][v]
    if name == "ndcg_loss":
      metric = _ndcg(s, y, topn, None if weights is None else weights[i][v])
    elif name == "ap_loss":
      metric = _ap(s, y, topn)
    else:
      metric = _recall(s, y, topn)
    out.append(1 - metric)
  return np.array(out)


def _call(name, scores, labels, topn, **kwargs):
  fn = getattr(losses, name)
  if name == "recall_loss":
    return fn(scores, labels, topn=3 if topn is None else topn, **kwargs)
  return fn(scores, labels, topn=topn, **kwargs)


@pytest.mark.parametrize("options", PAV)
@pytest.mark.parametrize("masked", [False, True], ids=["all-valid", "where"])
@pytest.mark.parametrize("topn", [None, 1, 3, 20])
@pytest.mark.parametrize("name", LOSSES)
def test_the_hard_limit_is_the_hard_metric(name, topn, masked, options):
  scores, labels, where, _ = _lists(0)
  where = where if masked else np.ones_like(where)
  got = _call(name, scores, labels, topn, where=where if masked else None, epsilon=HARD, reduce_fn=None, **options)
  expected = _reference(name, scores, labels, where, 3 if (name == "recall_loss" and topn is None) else topn)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ndcg_weights_in_the_hard_limit():
  scores, labels, where, weights = _lists(1)
  for topn in (None, 4):
    got = losses.ndcg_loss(scores, labels, where=where, weights=weights, topn=topn, epsilon=HARD, reduce_fn=None)
    np.testing.assert_allclose(got, _reference("ndcg_loss", scores, labels, where, topn, weights), atol=1e-6)


@pytest.mark.parametrize("masked", [False, True], ids=["all-valid", "where"])
@pytest.mark.parametrize("name", LOSSES)
def test_the_hard_limit_equals_one_minus_rax_metric(name, masked):
  rax = pytest.importorskip("rax")
  metric = {"ndcg_loss": rax.ndcg_metric, "ap_loss": rax.ap_metric, "recall_loss": rax.recall_metric}[name]
  scores, labels, where, _ = _lists(2)
  where = where if masked else None
  for topn in (None, 3):
    for reduce_fn in (None, jnp.mean, jnp.sum):
      kwargs = dict(where=where, reduce_fn=reduce_fn)
      topn_ = 3 if (name == "recall_loss" and topn is None) else topn
      hard = metric(scores, labels, topn=topn_, **kwargs)
      got = _call(name, scores, labels, topn_, epsilon=HARD, **kwargs)
      lists = np.ones(BATCH, bool) if where is None else where.any(-1)
      if reduce_fn is None:
        expected = np.where(lists, 1 - hard, 0)
      elif reduce_fn is jnp.mean:
        expected = 1 - hard
      else:
        expected = lists.sum() - hard
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{topn} {reduce_fn}")


@pytest.mark.parametrize("options", PAV)
@pytest.mark.parametrize("name", LOSSES)
def test_working_epsilons_give_finite_nonzero_gradients_matching_finite_differences(name, options):
  scores, labels, where, _ = _lists(3)
  for masked in (False, True):
    loss = lambda s: _call(name, s, labels, 3, where=where if masked else None, epsilon=1.0, **options)
    value, grad = jax.value_and_grad(loss)(jnp.asarray(scores))
    grad = np.asarray(grad)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), masked
    assert np.any(grad != 0), masked
    if masked:
      assert np.all(grad[~where] == 0)
    # a directional finite difference (the losses are piecewise smooth; a small step stays on one piece)
    direction = np.random.default_rng(4).normal(size=scores.shape).astype(np.float32)
    h = 1e-3
    fd = (loss(scores + h * direction) - loss(scores - h * direction)) / (2 * h)
    np.testing.assert_allclose(fd, np.sum(grad * direction), rtol=5e-2, atol=2e-3)


@pytest.mark.parametrize("options", PAV)
@pytest.mark.parametrize("epsilon", [1e-2, 1.0, 30.0])
@pytest.mark.parametrize("name", LOSSES)
def test_a_masked_list_is_exactly_the_list_of_its_valid_items(name, epsilon, options):
  scores, labels, where, _ = _lists(5)
  masked = _call(name, scores, labels, 3, where=where, epsilon=epsilon, reduce_fn=None, **options)
  for i in range(BATCH):
    v = where[i]
    if not v.any():
      assert masked[i] == 0
      continue
    alone = _call(name, scores[i][v], labels[i][v], 3, epsilon=epsilon, reduce_fn=None, **options)
    np.testing.assert_allclose(masked[i], alone, rtol=1e-5, atol=1e-6, err_msg=f"list {i}")


@pytest.mark.parametrize("name", LOSSES)
def test_reductions_batches_and_jit_agree(name):
  scores, labels, where, _ = _lists(6)
  per_list = _call(name, scores, labels, 3, where=where, epsilon=0.5, reduce_fn=None)
  assert per_list.shape == (BATCH,)
  lists = where.any(-1)
  np.testing.assert_allclose(_call(name, scores, labels, 3, where=where, epsilon=0.5), per_list[lists].mean(), 1e-6)
  np.testing.assert_allclose(
    _call(name, scores, labels, 3, where=where, epsilon=0.5, reduce_fn=jnp.sum), per_list.sum(), 1e-6
  )
  jitted = jax.jit(lambda s, y, w: _call(name, s, y, 3, where=w, epsilon=0.5, reduce_fn=None))
  np.testing.assert_allclose(jitted(scores, labels, where), per_list, rtol=1e-6, atol=1e-7)
  stacked = _call(name, np.stack([scores, scores]), np.stack([labels, labels]), 3, epsilon=0.5, reduce_fn=None)
  assert stacked.shape == (2, BATCH)
  # one epsilon per list
  eps = np.linspace(0.2, 2.0, BATCH).astype(np.float32)
  rows = [_call(name, scores[i], labels[i], 3, where=where[i], epsilon=eps[i], reduce_fn=None) for i in range(BATCH)]
  np.testing.assert_allclose(_call(name, scores, labels, 3, where=where, epsilon=eps, reduce_fn=None), rows, 1e-5)


def test_no_valid_item_anywhere_gives_zero_not_nan():
  scores, labels, _, _ = _lists(7)
  nothing = np.zeros(scores.shape, bool)
  for name in LOSSES:
    assert _call(name, scores, labels, 3, where=nothing, epsilon=1.0) == 0
    grad = jax.grad(lambda s: _call(name, s, labels, 3, where=nothing, epsilon=1.0))(jnp.asarray(scores))
    assert np.all(grad == 0)


def test_sinkhorn_without_masks_and_its_refusals():
  scores, labels, where, _ = _lists(8)
  for name in ("ndcg_loss", "recall_loss"):
    value = _call(name, scores, labels, 3, epsilon=1e-2, backend="sinkhorn")
    assert np.isfinite(value)
    hard = _call(name, scores, labels, 3, epsilon=HARD)
    np.testing.assert_allclose(_call(name, scores, labels, 3, epsilon=1e-4, backend="sinkhorn"), hard, atol=2e-2)
    with pytest.raises(ValueError, match="needs backend='pav'"):
      _call(name, scores, labels, 3, where=where, backend="sinkhorn")
  with pytest.raises(ValueError, match="ap_loss needs backend='pav'"):
    losses.ap_loss(scores, labels, backend="sinkhorn")


@pytest.mark.parametrize(
  "call, error, message",
  [
    (lambda: losses.ndcg_loss([[1.0, 2.0]], [[1.0]]), ValueError, "labels must have scores' shape (1, 2)"),
    (lambda: losses.ndcg_loss(1.0, 1.0), ValueError, "scores must have a list axis"),
    (lambda: losses.ap_loss([[1.0, 2.0]], [[1.0, 0.0]], where=[[1, 0]]), TypeError, "where must be a boolean"),
    (lambda: losses.ap_loss([[1.0, 2.0]], [[1.0, 0.0]], where=[True, False, True]), ValueError, "where must have"),
    (lambda: losses.ndcg_loss([[1.0, 2.0]], [[1.0, 0.0]], weights=[1.0, 2.0, 3.0]), ValueError, "weights must be"),
    (lambda: losses.ndcg_loss([[1.0, 2.0]], [[1.0, 0.0]], topn=0), ValueError, "topn must be an int >= 1"),
    (lambda: losses.recall_loss([[1.0, 2.0]], [[1.0, 0.0]], topn=None), TypeError, "topn must be an int"),
    (lambda: losses.recall_loss([[1.0, 2.0]], [[1.0, 0.0]], topn=1, reduce_fn="mean"), TypeError, "reduce_fn"),
    (lambda: losses.ap_loss([[1.0, 2.0]], [[1.0, 0.0]], epsilon=-1.0), ValueError, "epsilon must be a positive"),
  ],
)
def test_bad_arguments_are_refused_naming_them(call, error, message):
  with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
    call()
