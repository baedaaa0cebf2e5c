"""The backend contract: backend objects, dispatch by name or object, operations declared by the backend, and
output shapes taken from the operation."""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort
from otsort import _api
from otsort import _contract

X = jnp.array([[3.0, 1.0, 2.0, 0.5, 4.0]])


def test_backend_objects_carry_name_default_epsilon_and_operations():
  assert (otsort.Pav.name, otsort.Pav.default_epsilon) == ("pav", 1.0)
  assert (otsort.Sinkhorn.name, otsort.Sinkhorn.default_epsilon) == ("sinkhorn", 1e-2)
  assert otsort.Pav.operations == {"sort", "ranks", "quantile", "topk", "topk_mask"}
  assert otsort.Sinkhorn.operations == otsort.Pav.operations | {"quantize", "sort_with", "quantile_normalization"}
  assert isinstance(otsort.Pav(), _contract.Backend) and isinstance(otsort.Sinkhorn(), _contract.Backend)


def test_backend_objects_are_frozen_hashable_and_equal_by_options():
  a, b = otsort.Sinkhorn(threshold=1e-4), otsort.Sinkhorn(threshold=1e-4)
  assert a == b and hash(a) == hash(b) and a != otsort.Sinkhorn()
  with pytest.raises(AttributeError):
    a.threshold = 1.0
  assert otsort.Pav(regularization="kl") == otsort.Pav.from_options({"regularization": "kl"})


def test_a_name_with_options_and_the_configured_object_give_the_same_result_and_share_one_compilation():
  before = _api._apply_on_rows._cache_size()  # pylint: disable=protected-access
  by_name = otsort.ranks(X, epsilon=0.3, backend="pav", regularization="kl")
  by_object = otsort.ranks(X, epsilon=0.3, backend=otsort.Pav(regularization="kl"))
  again = otsort.ranks(X, epsilon=3.0, backend="pav", regularization="kl")  # a new, equal object
  np.testing.assert_array_equal(by_name, by_object)
  assert not np.array_equal(again, by_name)
  assert _api._apply_on_rows._cache_size() - before == 1  # pylint: disable=protected-access
  by_name = otsort.sort(X, backend="sinkhorn", threshold=1e-4, num_targets=3)
  by_object = otsort.sort(X, backend=otsort.Sinkhorn(threshold=1e-4), num_targets=3)
  np.testing.assert_array_equal(by_name, by_object)
  assert by_object.shape == (1, 3)


def test_operations_a_backend_lacks_are_refused_naming_backend_and_operation():
  for op in ("quantize", "sort_with", "quantile_normalization"):
    with pytest.raises(
      ValueError,
      match=rf"{op} is not an operation of backend 'pav' .*exists on backend\(s\) "
      r"'sinkhorn'",
    ):
      otsort.Pav().operation(op)
  assert otsort.Sinkhorn().operation("quantize").__func__ is otsort.Sinkhorn.quantize


def test_options_of_one_operation_are_refused_by_the_others():
  with pytest.raises(
    ValueError,
    match=r"topk takes no option\(s\) 'num_targets' on backend 'sinkhorn': they are "
    r"options of ranks, sort, sort_with only",
  ):
    otsort.topk(X, 2, backend="sinkhorn", num_targets=3)
  with pytest.raises(
    ValueError,
    match=r"with a backend object, \*\*options may only hold the options of topk "
    r"\(none\); got 'num_targets'",
  ):
    otsort.topk(X, 2, backend=otsort.Sinkhorn(), num_targets=3)


@pytest.mark.parametrize(
  "call, shape",
  [
    (lambda x: otsort.sort(x, backend="sinkhorn", num_targets=3), (0, 3)),
    (lambda x: otsort.sort(x, backend=otsort.Sinkhorn(), target=otsort.TargetMeasure.uniform(4)), (0, 4)),
    (lambda x: otsort.sort_with(x, jnp.zeros((*x.shape, 2)), num_targets=3), (0, 3, 2)),
    (lambda x: otsort.sort_with(x, jnp.zeros((*x.shape, 2)), topk=2), (0, 2, 2)),
    (lambda x: otsort.topk(x, 2, backend="sinkhorn"), (0, 2)),
    (lambda x: otsort.quantile(x, [0.1, 0.5, 0.9]), (0, 3)),
    (lambda x: otsort.quantile(x, 0.5, backend="sinkhorn"), (0,)),
    (lambda x: otsort.ranks(x, backend="sinkhorn", num_targets=3), (0, 5)),
    (lambda x: otsort.topk_mask(x, 2), (0, 5)),
  ],
)
def test_an_empty_batch_gets_the_shape_the_operation_gives(call, shape):
  x = jnp.zeros((0, 5))
  out = call(x)
  assert out.shape == shape and out.dtype == jnp.float32
  full = jax.eval_shape(call, jnp.zeros((2, 5)))
  assert full.shape == (2, *shape[1:])


def test_the_public_surface():
  assert {
    "Pav",
    "Sinkhorn",
    "TargetMeasure",
    "sort",
    "ranks",
    "quantile",
    "topk",
    "topk_mask",
    "quantize",
    "sort_with",
    "quantile_normalization",
    "losses",
    "filters",
    "rax",
  } == set(otsort.__all__)
  assert set(otsort.__all__) <= set(dir(otsort))
  assert otsort.sinkhorn.__all__ == ["Sinkhorn", "TargetMeasure"]
  assert not hasattr(otsort.sinkhorn, "sort") and not hasattr(otsort.sinkhorn, "parse_options")
  assert otsort.pav.__all__ == ["Pav"]
  assert otsort.Sinkhorn is otsort.sinkhorn.Sinkhorn and otsort.TargetMeasure is otsort.sinkhorn.TargetMeasure
  assert otsort.__version__ == importlib.metadata.version("otsort")


def test_losses_import_no_private_name_of_another_module():
  import ast  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel

  tree = ast.parse(inspect.getsource(otsort.losses))
  private = [
    f"{node.value.id}.{node.attr}"
    for node in ast.walk(tree)
    if isinstance(node, ast.Attribute)
    and isinstance(node.value, ast.Name)
    and node.value.id in {"_api", "_contract", "_checks"}
    and node.attr.startswith("_")
  ]
  assert not private, private
