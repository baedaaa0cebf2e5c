"""``otsort.rax``: soft ``rank_fn`` and ``cutoff_fn`` run through rax's own metrics: the hard limit is rax's hard
metric, working epsilons give finite, non-zero gradients, masks (``where``) are exact, and jit and batches work."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax  # in the test extra: the comparisons with rax's own metrics must run, not skip

import otsort

BATCH, N = 4, 12
METRICS = ["ndcg_metric", "dcg_metric", "mrr_metric", "precision_metric", "recall_metric", "ap_metric"]
HARD = 1e-6  # epsilon of the hard limit: the scores below are more than 10 HARD apart, the soft ranks 1 apart


def _lists(seed: int):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(BATCH, N)).astype(np.float32)
  assert np.min(np.diff(np.sort(scores, -1), axis=-1)) > 10 * HARD  # no ties
  labels = rng.integers(0, 3, size=(BATCH, N)).astype(np.float32)
  where = rng.uniform(size=(BATCH, N)) < 0.7
  where[0] = True  # one list unmasked
  where[1, :] = False  # one list with a single valid item
  where[1, 3] = True
  return jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(where)


def _soft(epsilon: float, cutoff_epsilon: float | None = None, **options):
  return dict(
    rank_fn=otsort.rax.rank_fn(epsilon=epsilon, **options),
    cutoff_fn=otsort.rax.cutoff_fn(epsilon=cutoff_epsilon or epsilon, **options),
  )


@pytest.mark.parametrize("masked", [False, True], ids=["all-valid", "where"])
@pytest.mark.parametrize("topn", [None, 1, 3, 20])
@pytest.mark.parametrize("metric", METRICS)
def test_the_hard_limit_is_rax_hard_metric(metric, topn, masked):
  scores, labels, where = _lists(0)
  fn = getattr(rax, metric)
  kwargs = dict(topn=topn, where=where if masked else None, reduce_fn=None)
  hard = fn(scores, labels, **kwargs)
  soft = fn(scores, labels, **kwargs, **_soft(HARD))
  np.testing.assert_allclose(soft, hard, rtol=1e-5, atol=1e-6)


def test_the_hard_limit_with_kl_and_minus_infinity_scores():
  # rax's convention: a score of -inf is an item not retrieved; the soft rank_fn ranks it last (+inf).
  scores, labels, where = _lists(1)
  scores = scores.at[2, :3].set(-jnp.inf)
  for metric in METRICS[1:]:
    fn = getattr(rax, metric)
    for options in ({"regularization": "l2"}, {"regularization": "kl"}):
      hard = fn(scores, labels, topn=3, where=where, reduce_fn=None)
      soft = fn(scores, labels, topn=3, where=where, reduce_fn=None, **_soft(HARD, **options))
      np.testing.assert_allclose(soft, hard, rtol=1e-5, atol=1e-6, err_msg=f"{metric} {options}")


@pytest.mark.parametrize("metric", METRICS)
def test_working_epsilons_give_finite_nonzero_gradients(metric):
  scores, labels, where = _lists(2)
  fn = getattr(rax, metric)
  for masked in (False, True):
    loss = lambda s: fn(s, labels, topn=3, where=where if masked else None, **_soft(1.0, 0.5))
    value, grad = jax.value_and_grad(loss)(scores)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (metric, masked)
    assert np.any(grad != 0), (metric, masked)
    if masked:  # the masked items get no gradient
      assert np.all(np.asarray(grad)[~np.asarray(where)] == 0)


def test_under_jit_and_batched_lists_equal_eager_and_one_list_at_a_time():
  scores, labels, where = _lists(3)
  soft = _soft(0.5, 0.5)
  for metric in METRICS:
    fn = lambda s, y, w: getattr(rax, metric)(s, y, topn=3, where=w, reduce_fn=None, **soft)
    batched = fn(scores, labels, where)
    np.testing.assert_allclose(jax.jit(fn)(scores, labels, where), batched, rtol=1e-5, atol=1e-6, err_msg=metric)
    rows = [fn(scores[i], labels[i], where[i]) for i in range(BATCH)]
    np.testing.assert_allclose(np.stack(rows), batched, rtol=1e-5, atol=1e-6, err_msg=metric)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("epsilon", [1e-3, 0.3, 3.0, 100.0])
def test_masked_ranks_are_exactly_those_of_the_valid_items_alone(epsilon, regularization):
  scores, _, where = _lists(4)
  ranks = otsort.rax.rank_fn(epsilon=epsilon, regularization=regularization)
  cutoff = otsort.rax.cutoff_fn(epsilon=epsilon, regularization=regularization)
  masked = ranks(scores, where=where)
  cut = cutoff(-masked, 3)
  for i in range(BATCH):
    valid = np.asarray(where[i])
    alone = ranks(scores[i][valid])
    np.testing.assert_allclose(masked[i][valid], alone, rtol=1e-6, atol=1e-5)
    assert np.all(np.isinf(masked[i][~valid]))
    np.testing.assert_allclose(cut[i][valid], cutoff(-alone, 3), rtol=1e-6, atol=1e-5)
    assert np.all(cut[i][~valid] == 0)


def test_cutoff_conventions_follow_rax():
  cutoff = otsort.rax.cutoff_fn(epsilon=1.0)
  a = jnp.array([[0.3, 2.0, -1.0, 1.0]])
  np.testing.assert_array_equal(cutoff(a), jnp.ones_like(a))
  np.testing.assert_array_equal(cutoff(a, n=0), jnp.zeros_like(a))
  np.testing.assert_array_equal(cutoff(a, 4), jnp.ones_like(a))
  np.testing.assert_array_equal(cutoff(a, 9), jnp.ones_like(a))  # a list with at most n items keeps them all
  mask = cutoff(a, 2)
  np.testing.assert_allclose(jnp.sum(mask), 2, rtol=1e-6)
  where = jnp.array([[True, True, False, False]])
  np.testing.assert_array_equal(cutoff(a, 2, where=where), where.astype(jnp.float32))
  np.testing.assert_array_equal(otsort.rax.cutoff_fn(epsilon=1e-3)(a, 2), rax.utils.cutoff(a, 2))


def test_rank_fn_is_one_based_highest_first_like_rax_ranks():
  scores, _, where = _lists(5)
  ranks = otsort.rax.rank_fn(epsilon=HARD)
  np.testing.assert_array_equal(ranks(scores), rax.utils.ranks(scores))
  hard = rax.utils.ranks(scores, where=where)
  soft = ranks(scores, where=where)
  np.testing.assert_array_equal(np.where(where, soft, 0), np.where(where, hard, 0))


def test_sinkhorn_ranks_without_masks_and_refuses_where():
  scores, labels, where = _lists(6)
  value = rax.ndcg_metric(scores, labels, **_soft(0.05, backend="sinkhorn"))
  assert np.isfinite(value)
  with pytest.raises(ValueError, match="cannot take where="):
    rax.ndcg_metric(scores, labels, where=where, **_soft(0.05, backend="sinkhorn"))


def test_bad_arguments_are_refused_naming_them():
  ranks, cutoff = otsort.rax.rank_fn(), otsort.rax.cutoff_fn()
  with pytest.raises(ValueError, match="segments= is not supported"):
    ranks(jnp.ones(3), segments=jnp.zeros(3, int))
  with pytest.raises(ValueError, match="segments= is not supported"):
    cutoff(jnp.ones(3), 2, segments=jnp.zeros(3, int))
  with pytest.raises(TypeError, match="n must be an int"):
    cutoff(jnp.ones(3), 1.5)
  with pytest.raises(ValueError, match="n must be an int >= 0"):
    cutoff(jnp.ones(3), -1)
  with pytest.raises(TypeError, match="where must be a boolean array"):
    ranks(jnp.ones(3), where=jnp.ones(3))
  with pytest.raises(ValueError, match="where must have scores' shape"):
    ranks(jnp.ones(3), where=jnp.ones(2, bool))
  with pytest.raises(TypeError, match="scores must be an array of numbers"):
    ranks("abc")
  with pytest.raises(ValueError, match="unknown option"):
    otsort.rax.rank_fn(threshold=1e-3)  # a sinkhorn option, refused when the factory is called
  with pytest.raises(ValueError, match="backend must be one of"):
    otsort.rax.cutoff_fn(backend="bogus")


def test_the_module_does_not_import_rax_and_its_examples_run():
  import ast  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel

  tree = ast.parse(inspect.getsource(otsort.rax))
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
  imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  assert not any(name == "rax" or name.startswith("rax.") for name in imported), imported
  flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
  assert doctest.testmod(otsort.rax, optionflags=flags).failed == 0
