"""Bad arguments of the sinkhorn-only operations are refused, with a message naming the argument (issue 14).

A refused argument compiles nothing, so these tests are fast; each one failed before its fix.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort
from otsort.sinkhorn import TargetMeasure

X = jnp.array([[3.0, 1.0, 2.0, 0.5]])


# quantile_normalization: targets and weights


@pytest.mark.parametrize(
  "targets, error, message",
  [
    ([3.0, 2.0, 1.0], ValueError, "targets must be sorted in non-decreasing order"),
    ([1.0, float("nan"), 3.0], ValueError, "targets must be finite"),
    ([1.0, float("inf"), 3.0], ValueError, "targets must be finite"),
    ([[1.0, 2.0, 3.0]], ValueError, "targets must be a 1-D array"),
    ([1.0], ValueError, "targets must be a 1-D array [m] of at least 2 values"),
    (2.0, ValueError, "targets must be a 1-D array"),
    ([1.0 + 1j, 2.0], TypeError, "targets must be real; got dtype complex"),
  ],
)
def test_quantile_normalization_refuses_bad_targets(targets, error, message):
  with pytest.raises(error, match=re.escape(message)):
    otsort.quantile_normalization(X, jnp.asarray(targets) if not isinstance(targets, float) else targets)


def test_quantile_normalization_unsorted_targets_message_shows_where():
  with pytest.raises(ValueError, match=re.escape("got targets[1] = 3.0 > targets[2] = 2.0")):
    otsort.quantile_normalization(X, np.array([1.0, 3.0, 2.0]))


def test_quantile_normalization_accepts_ties_in_targets_and_traced_targets():
  out = otsort.quantile_normalization(X, [0.0, 1.0, 1.0, 2.0])
  assert out.shape == X.shape and bool(jnp.all(jnp.isfinite(out)))
  traced = jax.jit(lambda t: otsort.quantile_normalization(X, t))(jnp.array([0.0, 1.0, 2.0, 3.0]))
  np.testing.assert_allclose(traced, otsort.quantile_normalization(X, [0.0, 1.0, 2.0, 3.0]), rtol=1e-5)


def test_quantile_normalization_under_jit_checks_concrete_numpy_targets_and_weights():
  # Before: inside jit, NumPy targets were taken for traced ones and not checked: [2, 1] gave a silent,
  # order-reversed result, [0, nan] NaN and [0, inf] inf. They are concrete at trace time, so they are checked.
  for targets, message in (
    ([2.0, 1.0], "targets must be sorted in non-decreasing order"),
    ([0.0, np.nan], "targets must be finite"),
    ([0.0, np.inf], "targets must be finite"),
  ):
    for given in (np.array(targets), targets):  # a NumPy array or a list, closed over
      with pytest.raises(ValueError, match=re.escape(message)):
        jax.jit(lambda x, t=given: otsort.quantile_normalization(x, t))(X)
  with pytest.raises(ValueError, match=re.escape("weights must sum to 1")):
    jax.jit(lambda x: otsort.quantile_normalization(x, np.array([0.0, 1.0]), weights=np.array([0.5, 0.6])))(X)


@pytest.mark.parametrize(
  "weights, message",
  [
    ([[0.3, 0.3, 0.4]], "weights must be a non-empty 1-D sequence; got shape (1, 3)"),
    ([0.5, float("nan"), 0.5], "weights must be finite"),
    ([0.5, 0.6, -0.1], "weights must all be positive"),
    ([0.3, 0.3, 0.3], "weights must sum to 1"),
    ([0.5, 0.5], "weights must have length 3; got length 2"),
  ],
)
def test_quantile_normalization_refuses_bad_weights(weights, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    otsort.quantile_normalization(X, [0.0, 1.0, 2.0], weights=np.asarray(weights))


# sort_with: complex values


def test_sort_with_refuses_complex_values():
  with pytest.raises(TypeError, match=re.escape("values must be real; got dtype complex64")):
    otsort.sort_with(X, X + 1j)


# quantize: num_levels


@pytest.mark.parametrize("num_levels", [np.int32(3), np.array(3), jnp.array(3)])
def test_quantize_accepts_numpy_integer_scalars_and_0d_integer_arrays(num_levels):
  np.testing.assert_array_equal(otsort.quantize(X, num_levels), otsort.quantize(X, 3))


@pytest.mark.parametrize(
  "num_levels, error",
  [
    (np.array(3.0), TypeError),
    (np.array([3]), TypeError),
    (2.5, TypeError),
    (True, TypeError),
    (1, ValueError),
    ("3", TypeError),
    (None, TypeError),
  ],
)
def test_quantize_refuses_bad_num_levels(num_levels, error):
  with pytest.raises(error, match=re.escape("num_levels must be an int >= 2") + ".*got num_levels = "):
    otsort.quantize(X, num_levels)


# Empty inputs: the arguments are checked before the empty shortcut


@pytest.mark.parametrize(
  "call, error, message",
  [
    (lambda x: otsort.quantize(x, -5), ValueError, "num_levels must be an int >= 2"),
    (
      lambda x: otsort.quantize(x, 3, target_weights=[0.5, 0.5]),
      ValueError,
      "quantize takes no option(s) 'target_weights' on backend 'sinkhorn'",
    ),
    (lambda x: otsort.sort_with(x, jnp.zeros(x.shape, jnp.complex64)), TypeError, "values must be real"),
    (lambda x: otsort.sort_with(x, jnp.zeros((3, 1))), ValueError, "values must have x's shape"),
    (lambda x: otsort.quantile_normalization(x, [2.0, 1.0]), ValueError, "targets must be sorted"),
    (lambda x: otsort.quantile_normalization(x, [1.0, 2.0], weights=[0.5]), ValueError, "weights must have length 2"),
    (
      lambda x: otsort.quantile_normalization(x, [1.0, 2.0], num_targets=2),
      ValueError,
      "quantile_normalization takes no option(s) 'num_targets'",
    ),
  ],
)
def test_empty_inputs_still_check_arguments(call, error, message):
  with pytest.raises(error, match=re.escape(message)):
    call(jnp.zeros((2, 0)))


# Target measures


@pytest.mark.parametrize("num_points, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_quantile_targets_refuse_bad_num_points(num_points, error):
  with pytest.raises(error, match="num_points must be"):
    TargetMeasure.quantiles([0.5], num_points)


# Finite inputs with an accepted epsilon give finite values and gradients (sinkhorn)


def _finite_value_and_grads(x, epsilon):
  loss = lambda x, e: jnp.sum(otsort.sort(x, epsilon=e, backend="sinkhorn") * jnp.arange(1.0, x.shape[-1] + 1))
  value = otsort.sort(x, epsilon=epsilon, backend="sinkhorn")
  gx, ge = jax.grad(loss, argnums=(0, 1))(x, jnp.asarray(epsilon, x.dtype))
  return value, gx, ge


def test_sinkhorn_float32_rows_near_the_largest_float_are_finite_and_sorted():
  x = jnp.array([[3e38, -3e38, 1.0]], jnp.float32)
  value, gx, ge = _finite_value_and_grads(x, 1e-2)
  assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.isfinite(ge))
  np.testing.assert_allclose(value[0, [0, 2]], [-3e38, 3e38], rtol=1e-3)


@pytest.mark.parametrize("epsilon", [1e30, 3e38])
def test_sinkhorn_huge_epsilon_gives_the_mean_and_finite_gradients(epsilon):
  value, gx, ge = _finite_value_and_grads(X, epsilon)
  np.testing.assert_allclose(value, jnp.full_like(X, jnp.mean(X)), rtol=1e-5)
  assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.isfinite(ge))


# The sweep (issue 14): every public function, each argument given values of a wrong type. Each call must raise a
# TypeError (or, for a string that is merely not one of the choices, a ValueError) whose message names the
# argument, before any compilation.

_X = np.array([[3.0, 1.0, 2.0, 0.5]], np.float32)
_IMAGE = np.zeros((4, 4), np.float32)

# (what is called, its valid arguments, the arguments that may be None)
_SWEEP = {
  "sort": (otsort.sort, dict(x=_X, axis=-1, descending=False, epsilon=0.1, backend="pav"), {"epsilon"}),
  "ranks": (otsort.ranks, dict(x=_X, axis=-1, descending=False, epsilon=0.1, backend="pav"), {"epsilon"}),
  "quantile": (otsort.quantile, dict(x=_X, q=0.5, axis=-1, epsilon=0.1, backend="pav"), {"epsilon"}),
  "topk": (otsort.topk, dict(x=_X, k=2, axis=-1, epsilon=0.1, backend="pav"), {"epsilon"}),
  "topk_mask": (otsort.topk_mask, dict(x=_X, k=2, axis=-1, epsilon=0.1, backend="pav"), {"epsilon"}),
  "quantize": (otsort.quantize, dict(x=_X, num_levels=2, axis=-1, epsilon=0.1, backend="sinkhorn"), {"epsilon"}),
  "sort_with": (
    otsort.sort_with,
    dict(x=_X, values=_X, topk=2, axis=-1, epsilon=0.1, backend="sinkhorn"),
    {"epsilon", "topk"},
  ),
  "quantile_normalization": (
    otsort.quantile_normalization,
    dict(x=_X, targets=[0.0, 1.0], weights=[0.5, 0.5], axis=-1, epsilon=0.1, backend="sinkhorn"),
    {"epsilon", "weights"},
  ),
  "sort(sinkhorn target options)": (
    otsort.sort,
    dict(x=_X, backend="sinkhorn", num_targets=3, target_weights=[0.2, 0.3, 0.5]),
    {"num_targets", "target_weights"},
  ),
  "sort(target)": (otsort.sort, dict(x=_X, backend="sinkhorn", target=TargetMeasure.uniform(3)), {"target"}),
  "spearman_correlation": (
    otsort.losses.spearman_correlation,
    dict(
      pred=_X[0],
      target=_X[0],
      axis=-1,
      target_soft=False,
      groups=np.array([0, 0, 1, 1]),
      num_groups=2,
      epsilon=0.1,
      backend="pav",
    ),
    {"epsilon", "groups", "num_groups"},
  ),
  "spearman_loss": (otsort.losses.spearman_loss, dict(pred=_X, target=_X, target_soft=False, epsilon=0.1), {"epsilon"}),
  "spearman_grad_hess": (
    otsort.losses.spearman_grad_hess,
    dict(
      pred=_X[0],
      target=_X[0],
      groups=np.array([0, 0, 1, 1]),
      num_groups=2,
      target_soft=False,
      hessian="diagonal",
      num_probes=2,
      seed=0,
      normalize=True,
      epsilon=0.1,
      backend="pav",
    ),
    {"epsilon", "groups", "num_groups"},
  ),
  "spearman_boosting_objective": (
    otsort.losses.spearman_boosting_objective,
    dict(groups=np.array([0, 1]), hessian="diagonal", num_probes=2, normalize=True, epsilon=0.1, backend="pav"),
    {"epsilon", "groups"},
  ),
  "soft_topk_error": (
    otsort.losses.soft_topk_error,
    dict(logits=_X, labels=np.array([1]), k=2, axis=-1, epsilon=0.1, backend="pav"),
    {"epsilon"},
  ),
  "soft_error": (
    otsort.losses.soft_error,
    dict(logits=_X, labels=np.array([1]), axis=-1, epsilon=0.1, backend="pav"),
    {"epsilon"},
  ),
  "ndcg_loss": (
    otsort.losses.ndcg_loss,
    dict(
      scores=_X,
      labels=_X,
      where=np.ones(_X.shape, bool),
      weights=_X,
      topn=2,
      epsilon=0.1,
      backend="pav",
      reduce_fn=jnp.mean,
    ),
    {"where", "weights", "topn", "epsilon", "reduce_fn"},
  ),
  "ap_loss": (
    otsort.losses.ap_loss,
    dict(scores=_X, labels=_X, where=np.ones(_X.shape, bool), topn=2, epsilon=0.1, backend="pav", reduce_fn=jnp.sum),
    {"where", "topn", "epsilon", "reduce_fn"},
  ),
  "recall_loss": (
    otsort.losses.recall_loss,
    dict(scores=_X, labels=_X, topn=2, where=np.ones(_X.shape, bool), epsilon=0.1, backend="pav", reduce_fn=None),
    {"where", "epsilon", "reduce_fn"},
  ),
  "quantile_filter": (
    otsort.filters.quantile_filter,
    dict(image=_IMAGE, q=0.5, size=3, mode="reflect", cval=0.0, epsilon=0.1, backend="pav"),
    {"epsilon"},
  ),
  "median_filter": (
    otsort.filters.median_filter,
    dict(image=_IMAGE, size=3, mode="reflect", cval=0.0, epsilon=0.1, backend="pav"),
    {"epsilon"},
  ),
  "Pav": (otsort.Pav, dict(regularization="l2", impl="auto"), set()),
  "Sinkhorn": (
    otsort.Sinkhorn,
    dict(
      squashing="sigmoid",
      threshold=1e-3,
      min_iterations=0,
      max_iterations=10,
      differentiation="implicit",
      initializer="monotone",
    ),
    set(),
  ),
  "TargetMeasure": (TargetMeasure, dict(locations=[0.0, 1.0], weights=[0.5, 0.5]), set()),
  "TargetMeasure.uniform": (TargetMeasure.uniform, dict(num_targets=3, weights=[0.2, 0.3, 0.5]), {"weights"}),
  "TargetMeasure.topk": (TargetMeasure.topk, dict(num_points=5, k=2), set()),
  "TargetMeasure.topk_mask": (TargetMeasure.topk_mask, dict(num_points=5, k=2), set()),
  "TargetMeasure.quantiles": (TargetMeasure.quantiles, dict(q=[0.5], num_points=5), set()),
}
_WRONG_TYPES = {
  "object": object(),
  "dict": {},
  "set": {1},
  "list of objects": [object()],
  "None": None,
  "string": "abc",
  "complex": 1 + 2j,
}


def _sweep_cases():
  for name, (_, kwargs, optional) in _SWEEP.items():
    for argument in kwargs:
      for label in _WRONG_TYPES:
        if label == "None" and argument in optional:
          continue
        yield pytest.param(name, argument, label, id=f"{name}-{argument}-{label}")


@pytest.mark.parametrize("name, argument, label", _sweep_cases())
def test_every_argument_of_a_wrong_type_is_refused_naming_it(name, argument, label):
  fn, kwargs, _ = _SWEEP[name]
  wrong = _WRONG_TYPES[label]
  # A string can be of the right type and a wrong value (an unknown mode or backend).
  errors = (TypeError, ValueError) if label == "string" else TypeError
  with pytest.raises(errors) as raised:
    fn(**{**kwargs, argument: wrong})
  assert argument in str(raised.value), f"{name}({argument}={wrong!r}): {raised.value}"


def test_the_sweep_covers_every_public_function():
  public = {name for name in otsort.__all__ if callable(getattr(otsort, name)) and not name[0].isupper()}
  public |= {name for name in otsort.losses.__all__} | {"quantile_filter", "median_filter"}
  covered = {name.split("(")[0] for name in _SWEEP}
  assert public <= covered, public - covered
  assert {"Pav", "Sinkhorn", "TargetMeasure"} <= covered


@pytest.mark.parametrize(
  "call, error, message",
  [
    (
      lambda: otsort.quantile(_X, True),
      TypeError,
      "q must be a number or a non-empty 1-D sequence of numbers in [0, 1]; got q = True",
    ),
    (lambda: otsort.quantile(_X, [0.5, True]), TypeError, "q must be a number"),
    (lambda: otsort.quantile(None, 0.5), TypeError, "x must be an array of numbers; got x = None"),
    (lambda: otsort.sort_with({}, _X), TypeError, "x must be an array of numbers; got x = {}"),
    (lambda: otsort.Sinkhorn(max_iterations=2**63), ValueError, "max_iterations must be an int in [1, 2147483647]"),
    (
      lambda: otsort.sort(_X, backend=otsort.Pav(), regularization="kl"),
      ValueError,
      "with a backend object, **options may only hold the options of sort (none); got 'regularization'",
    ),
    (
      lambda: otsort.sort(_X, backend=otsort.Sinkhorn(), threshold=1e-4),
      ValueError,
      "set backend options on the object, Sinkhorn(threshold=...)",
    ),
    (lambda: otsort.sort(_X, backend=otsort.Sinkhorn(), num_targets=1), ValueError, "num_targets must be an int >= 2"),
    (
      lambda: otsort.sort_with(_X, _X, backend=otsort.Pav()),
      ValueError,
      "sort_with is not an operation of backend 'pav'",
    ),
  ],
)
def test_issue_9_cases_are_refused_naming_the_argument(call, error, message):
  with pytest.raises(error, match=re.escape(message)):
    call()


def test_numpy_scalars_are_accepted_where_python_numbers_are():
  backend = otsort.Sinkhorn(threshold=np.float32(1e-3), max_iterations=np.int32(2000))
  assert backend == otsort.Sinkhorn(threshold=float(np.float32(1e-3)))
