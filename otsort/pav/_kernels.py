"""Bindings of the native PAV kernels (XLA FFI custom calls): loading, registration and calls.

The compiled libraries are private. ``_pav_cpu`` is always built; ``_pav_cuda`` only where a CUDA compiler was
found. They are loaded and registered with XLA on first use, so ``import otsort`` works without them.

The two forward handlers take rows ``[..., n]`` (every leading dimension is a batch dimension) and return,
besides the projection, the block structure of the isotonic solution: the block id of each element is the sorted
position where its block starts. Two derivative handlers take those ids back and apply the projections' Jacobians
(or their transposes) to a tangent, row by row; :mod:`otsort.pav._jacobians` makes them JAX primitives.
"""

from __future__ import annotations

from collections.abc import Callable
import ctypes
import functools
import importlib.util
import pathlib

import jax
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

_SCORES_TARGET = "otsort_pav_scores"
_SORT_TARGET = "otsort_pav_sort"
_SCORES_JVP_TARGET = "otsort_pav_scores_jvp"
_SORT_JVP_TARGET = "otsort_pav_sort_jvp"
_TARGETS = (_SCORES_TARGET, _SORT_TARGET, _SCORES_JVP_TARGET, _SORT_JVP_TARGET)

# platform as JAX names it -> (library, handler symbol suffix, platform as XLA registers it); the symbols are
# OtsortPav{Scores,Sort,ScoresJvp,SortJvp}{suffix}, in the order of _TARGETS.
_LIBRARIES = {
  "cpu": ("_pav_cpu", "Cpu", "cpu"),
  "cuda": ("_pav_cuda", "Cuda", "CUDA"),
}
_SYMBOLS = ("OtsortPavScores", "OtsortPavSort", "OtsortPavScoresJvp", "OtsortPavSortJvp")


def _library_path(stem: str) -> pathlib.Path | None:
  # This module's folder first, then every folder of the package: an editable install keeps the compiled
  # files apart from the sources.
  spec = importlib.util.find_spec("otsort.pav")
  folders = [str(pathlib.Path(__file__).parent), *(spec.submodule_search_locations or [] if spec else [])]
  for folder in folders:
    for suffix in (".so", ".dylib", ".dll"):
      candidate = pathlib.Path(folder) / f"{stem}{suffix}"
      if candidate.exists():
        return candidate
  return None


@functools.cache
def _register(platform: str) -> str | None:
  """Loads and registers the kernels for ``platform``; returns None, or why they are unavailable."""
  if platform not in _LIBRARIES:
    return f"otsort has no native PAV kernel for platform {platform!r}"
  stem, suffix, xla_platform = _LIBRARIES[platform]
  path = _library_path(stem)
  if path is None:
    return f"the native PAV library {stem} was not built (reinstall otsort with a compiler for {platform})"
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as error:
    return f"the native PAV library {path} could not be loaded: {error}"
  missing = [name + suffix for name in _SYMBOLS if not hasattr(library, name + suffix)]
  if missing:
    return f"the native PAV library {path} is out of date (it lacks {', '.join(missing)}): reinstall otsort"
  for target, name in zip(_TARGETS, _SYMBOLS):
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, name + suffix)), platform=xla_platform)
  return None


def unavailable_reason(platform: str) -> str | None:
  """None when the native kernels run on ``platform`` ("cpu", "cuda", ...), otherwise why not."""
  if platform == "cuda" and not _has_gpu_backend():
    return "JAX has no CUDA backend in this process"
  return _register(platform)


@functools.cache
def _has_gpu_backend() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def _register_available() -> None:
  for platform in _LIBRARIES:
    unavailable_reason(platform)


def _row_spec(sharding, ndim: int) -> PartitionSpec:
  """The input's partitioning of the leading dimensions, with the row dimension whole."""
  spec = tuple(getattr(sharding, "spec", ())) + (None,) * ndim
  return PartitionSpec(*spec[: ndim - 1], None)


def _rowwise(kernel: Callable, num_outputs: int) -> Callable:
  """Makes a kernel on rows ``(x [..., n], epsilon [..., 1])`` partitionable and batchable.

  XLA cannot look inside a custom call, so it would gather a sharded input onto every device and run the whole
  call there. The partitioning rule tells it that rows are independent: each device runs the kernel on its
  own rows (and their epsilons). The vmap rule says the same to JAX: a mapped axis is one more leading
  dimension of rows.
  """
  partitioned = custom_partitioning(kernel)

  def shardings(mesh, arg_shapes):
    spec = _row_spec(arg_shapes[0].sharding, len(arg_shapes[0].shape))
    row = NamedSharding(mesh, spec)
    return (row, row), tuple(row for _ in range(num_outputs))

  def infer(mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[1]

  def partition(mesh, arg_shapes, result_shape):
    arg_shardings, out_shardings = shardings(mesh, arg_shapes)
    return mesh, kernel, out_shardings, arg_shardings

  partitioned.def_partition(
    partition=partition,
    infer_sharding_from_operands=infer,
    sharding_rule="... n, ... o -> " + ", ".join(["... n"] * num_outputs),
    need_replication_factors=("n", "o"),
  )
  batched = jax.custom_batching.custom_vmap(partitioned)

  @batched.def_vmap
  def _vmap_rule(axis_size, in_batched, x, epsilon):
    # The mapped axis is just another leading dimension; an unmapped operand is broadcast along it.
    x, epsilon = (
      a if mapped else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, mapped in zip((x, epsilon), in_batched)
    )
    return batched(x, epsilon), (True,) * num_outputs

  return batched


def _partitioned_rows(kernel: Callable, num_args: int) -> Callable:
  """Makes a kernel whose operands and result are all rows ``[..., n]`` partitionable: each device applies it to
  its own rows (the derivative kernels; batching is the primitives' business, see ``_jacobians``)."""
  partitioned = custom_partitioning(kernel)

  def shardings(mesh, arg_shapes):
    row = NamedSharding(mesh, _row_spec(arg_shapes[0].sharding, len(arg_shapes[0].shape)))
    return (row,) * num_args, row

  def partition(mesh, arg_shapes, result_shape):
    arg_shardings, out_sharding = shardings(mesh, arg_shapes)
    return mesh, kernel, out_sharding, arg_shardings

  partitioned.def_partition(
    partition=partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: shardings(mesh, arg_shapes)[1],
    sharding_rule=", ".join(["... n"] * num_args) + " -> ... n",
    need_replication_factors=("n",),
  )
  return partitioned


@functools.cache
def _scores_call(kl: bool, topk: int) -> Callable:
  def kernel(x, epsilon):
    call = jax.ffi.ffi_call(
      _SCORES_TARGET,
      (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, jnp.int32)),
      vmap_method="broadcast_all",
    )
    return call(x, epsilon, kl=np.bool_(kl), topk=np.int64(topk))

  return _rowwise(kernel, 2)


@functools.cache
def _sort_call(kl: bool) -> Callable:
  def kernel(x, epsilon):
    ids = jax.ShapeDtypeStruct(x.shape, jnp.int32)
    call = jax.ffi.ffi_call(
      _SORT_TARGET,
      (jax.ShapeDtypeStruct(x.shape, x.dtype), ids, ids),
      vmap_method="broadcast_all",
    )
    return call(x, epsilon, kl=np.bool_(kl))

  return _rowwise(kernel, 3)


def scores(x: jax.Array, epsilon: jax.Array, *, kl: bool, topk: int) -> tuple[jax.Array, jax.Array]:
  """P(x / epsilon, w) for each row of ``x`` ``[..., n]``: (projection, block ids), both in input order.

  ``epsilon`` ``[..., 1]`` holds each row's epsilon (the division is done in double inside the kernel). ``w`` is
  rho = (n, ..., 1) when ``topk`` is 0 (1-based soft ranks), else k ones then zeros (top-k mask).
  """
  _register_available()
  return _scores_call(bool(kl), int(topk))(x, epsilon)


def sort(x: jax.Array, epsilon: jax.Array, *, kl: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """P(rho / epsilon, x) for each row: (values in decreasing order, block id per input, per output)."""
  _register_available()
  return _sort_call(bool(kl))(x, epsilon)


@functools.cache
def _scores_jvp_call(kl: bool) -> Callable:
  def kernel(r, block, v):
    call = jax.ffi.ffi_call(_SCORES_JVP_TARGET, jax.ShapeDtypeStruct(v.shape, v.dtype))
    return call(r, block, v, kl=np.bool_(kl))

  return kernel, _partitioned_rows(kernel, 3)


@functools.cache
def _sort_jvp_call(kl: bool, transpose: bool) -> Callable:
  def kernel(x, block_in, block_out, v):
    call = jax.ffi.ffi_call(_SORT_JVP_TARGET, jax.ShapeDtypeStruct(v.shape, v.dtype))
    return call(x, block_in, block_out, v, kl=np.bool_(kl), transpose=np.bool_(transpose))

  return kernel, _partitioned_rows(kernel, 4)


def scores_jvp(r: jax.Array, block: jax.Array, v: jax.Array, *, kl: bool, partitioned: bool) -> jax.Array:
  """J v for the scores projection at its solution ``r`` with block ids ``block`` (all ``[..., n]``, input
  order). J is symmetric, so this is also the vector-Jacobian product. ``partitioned``: with the partitioning
  rule, for a computation over several devices."""
  _register_available()
  return _scores_jvp_call(bool(kl))[bool(partitioned)](r, block, v)


def sort_jvp(
  x: jax.Array, block_in: jax.Array, block_out: jax.Array, v: jax.Array, *, kl: bool, transpose: bool, partitioned: bool
) -> jax.Array:
  """A v (``v`` in input order, result sorted) or, with ``transpose``, A^T v (``v`` sorted, result in input
  order), for the soft sort's Jacobian A in x at the rows ``x``."""
  _register_available()
  return _sort_jvp_call(bool(kl), bool(transpose))[bool(partitioned)](x, block_in, block_out, v)
