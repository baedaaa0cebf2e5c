"""The compiled PAV kernels: what the libraries export, and the CUDA kernel computing what the CPU kernel computes.

The symbol checks read the built libraries with ``nm -D`` (binutils): each exports exactly its four XLA FFI
handlers (two projections, two derivatives), everything else is hidden. The CUDA library is only built where
CMake found a CUDA compiler; its checks skip when it is absent, unless ``OTSORT_EXPECT_CUDA=1`` says it must be
there (for CI machines with nvcc).

The GPU comparisons run only where JAX sees a CUDA GPU and import nothing GPU-specific before that, so this file
collects and skips cleanly on a CPU-only machine.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest

import otsort
import otsort.pav

_HANDLERS = ("OtsortPavScores", "OtsortPavSort", "OtsortPavScoresJvp", "OtsortPavSortJvp")
_CPU_HANDLERS = {name + "Cpu" for name in _HANDLERS}
_CUDA_HANDLERS = {name + "Cuda" for name in _HANDLERS}


# ---------------------------------------------------------------------------------------------------------
# Exported symbols.


def _package_folders() -> list[pathlib.Path]:
  """Every folder of ``otsort.pav``: an editable install keeps the compiled files apart from the sources."""
  spec = importlib.util.find_spec("otsort.pav")
  folders = [pathlib.Path(folder) for folder in (spec.submodule_search_locations or [])] if spec else []
  return [pathlib.Path(otsort.pav.__file__).parent, *folders]


def _find_library(stem: str) -> pathlib.Path | None:
  for folder in _package_folders():
    candidate = folder / f"{stem}.so"
    if candidate.exists():
      return candidate
  return None


def _tool(name: str) -> str:
  path = shutil.which(name)
  if path is None:
    pytest.skip(f"`{name}` (binutils) is not on PATH, so the built libraries cannot be inspected")
  return path


def _dynamic_symbols(library: pathlib.Path, demangle: bool = False) -> list[tuple[str, str]]:
  """(type letter, name) of every symbol the library defines in its dynamic symbol table."""
  command = [_tool("nm"), "-D", "--defined-only", *(["-C"] if demangle else []), str(library)]
  listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  symbols = []
  for line in listing.splitlines():
    parts = line.split(maxsplit=2)
    if len(parts) == 3:
      symbols.append((parts[1], parts[2]))
  return symbols


def _check_exports(library: pathlib.Path, handlers: set[str]) -> None:
  symbols = _dynamic_symbols(library)
  functions = {name for kind, name in symbols if kind == "T"}
  assert functions == handlers, (
    f"{library.name} should export exactly the FFI handlers {sorted(handlers)} as "
    f"functions; it exports {sorted(functions)}"
  )
  # Weak instantiations of std templates keep default visibility; nothing of ours may leak.
  ours = [name for _, name in _dynamic_symbols(library, demangle=True) if "otsort" in name and name not in handlers]
  assert not ours, f"{library.name} exports internal otsort symbols: {ours}"


def _cuda_library() -> pathlib.Path:
  library = _find_library("_pav_cuda")
  if library is None:
    reason = (
      "the CUDA kernel _pav_cuda.so was not built: CMake found no CUDA compiler (nvcc) at build time, "
      "or the build ran with -DOTSORT_CUDA=OFF"
    )
    if os.environ.get("OTSORT_EXPECT_CUDA") == "1":
      pytest.fail(f"OTSORT_EXPECT_CUDA=1, but {reason}")
    pytest.skip(reason)
  return library


def test_cpu_library_exports_only_its_ffi_handlers():
  library = _find_library("_pav_cpu")
  assert library is not None, f"_pav_cpu.so is always built; it is in none of {_package_folders()}"
  _check_exports(library, _CPU_HANDLERS)


def test_cuda_library_exports_only_its_ffi_handlers():
  _check_exports(_cuda_library(), _CUDA_HANDLERS)


def test_cuda_library_carries_the_cuda_runtime_inside():
  library = _cuda_library()
  dynamic = subprocess.run([_tool("readelf"), "-d", str(library)], capture_output=True, text=True, check=True).stdout
  needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
  assert not [name for name in needed if "cudart" in name], f"cudart should be linked statically; NEEDED: {needed}"
  leaked = [name for _, name in _dynamic_symbols(library) if name.startswith(("cuda", "__cuda"))]
  assert not leaked, f"{library.name} re-exports CUDA runtime symbols: {leaked[:10]}"


def test_cuda_library_has_machine_code_for_a100_and_h100():
  library = _cuda_library()
  cuobjdump = shutil.which("cuobjdump")
  if cuobjdump is None and pathlib.Path("/usr/local/cuda/bin/cuobjdump").exists():
    cuobjdump = "/usr/local/cuda/bin/cuobjdump"
  if cuobjdump is None:
    pytest.skip("cuobjdump (CUDA toolkit) is not installed, so the embedded GPU architectures cannot be listed")
  listing = subprocess.run([cuobjdump, "--list-elf", str(library)], capture_output=True, text=True, check=True).stdout
  architectures = set(re.findall(r"sm_\d+", listing))
  assert {"sm_80", "sm_90"} <= architectures, f"cubins for {sorted(architectures)}; expected sm_80 and sm_90"


# ---------------------------------------------------------------------------------------------------------
# The CUDA kernel against the CPU kernel.


@pytest.fixture(scope="module")
def gpu():
  """The first CUDA GPU, with the native CUDA kernel registered; skips the test otherwise."""
  try:
    devices = jax.devices("gpu")
  except RuntimeError as error:
    pytest.skip(f"no CUDA GPU: jax.devices('gpu') failed ({error})")
  from otsort.pav import _kernels  # pylint: disable=g-import-not-at-top

  for platform in ("cpu", "cuda"):
    reason = _kernels.unavailable_reason(platform)
    if reason is not None:
      if platform == "cuda" and os.environ.get("OTSORT_EXPECT_CUDA") == "1":
        pytest.fail(f"OTSORT_EXPECT_CUDA=1, but the CUDA kernel is unavailable: {reason}")
      pytest.skip(f"the native {platform} kernel is unavailable: {reason}")
  return devices[0]


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
  if request.param == np.float64:
    request.getfixturevalue("x64")
  return request.param


def _rows_with_ties(seed: int, shape: tuple[int, ...], dtype) -> np.ndarray:
  """Continuous values with about a third of each row drawn from a few halves, so ties are common."""
  rng = np.random.default_rng(seed)
  smooth = rng.normal(size=shape) * 10.0 ** rng.uniform(-2, 3, size=shape[:-1] + (1,))
  ties = rng.integers(-4, 5, size=shape) * 0.5
  return np.where(rng.random(shape) < 0.35, ties, smooth).astype(dtype)


def _ones(x):
  """One epsilon per row of ``x`` ``[..., n]``: the kernels' epsilon operand ``[..., 1]``."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  return jnp.ones((*x.shape[:-1], 1), x.dtype)


def _on(device, fn, *args):
  """fn(*args) with the arrays committed to ``device``, under jit, returned as numpy."""
  args = [jax.device_put(a, device) if isinstance(a, np.ndarray) else a for a in args]
  with jax.default_device(device):
    out = fn(*args)
  return jax.tree.map(np.asarray, out)


def _tolerance(dtype) -> dict:
  return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def _assert_same_ids(gpu_ids: np.ndarray, cpu_ids: np.ndarray, what: str) -> None:
  # Both kernels run the same core with the same double arithmetic (the CUDA build disables FMA contraction);
  # only KL's exp/log1p may differ by an ulp, which moves no block boundary on generic data.
  mismatched = np.argwhere(gpu_ids != cpu_ids)
  assert mismatched.size == 0, (
    f"{what}: {len(mismatched)} block ids differ, first at {mismatched[0].tolist()}: "
    f"GPU {gpu_ids[tuple(mismatched[0])]}, CPU {cpu_ids[tuple(mismatched[0])]}"
  )


_SHAPES = [(1, 1), (3, 7), (5, 64), (2, 300), (3, 3000), (1, 20000), (1024, 33)]


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("topk", [0, 5])
@pytest.mark.parametrize("shape", _SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_scores_kernel_matches_cpu_kernel(gpu, dtype, regularization, topk, shape):
  from otsort.pav import _projections  # pylint: disable=g-import-not-at-top

  k = min(topk, shape[-1])
  z = _rows_with_ties(shape[0] * 100_003 + shape[1] * 11 + topk, shape, dtype)
  fn = jax.jit(lambda z: _projections.project_scores(z, _ones(z), regularization == "kl", k, "native"))
  gpu_out, gpu_ids = _on(gpu, fn, z)
  cpu_out, cpu_ids = _on(jax.devices("cpu")[0], fn, z)
  assert gpu_out.dtype == dtype
  np.testing.assert_allclose(gpu_out, cpu_out, **_tolerance(dtype))
  _assert_same_ids(gpu_ids, cpu_ids, f"scores {regularization} topk={k}")


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("shape", _SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_sort_kernel_matches_cpu_kernel(gpu, dtype, regularization, shape):
  from otsort.pav import _projections  # pylint: disable=g-import-not-at-top

  x = _rows_with_ties(shape[0] * 100_003 + shape[1] * 11 + 1, shape, dtype)
  fn = jax.jit(lambda x: _projections.project_sort(x, 0.1 * _ones(x), regularization == "kl", "native"))
  gpu_out, gpu_in, gpu_ids = _on(gpu, fn, x)
  cpu_out, cpu_in, cpu_ids = _on(jax.devices("cpu")[0], fn, x)
  scale = np.abs(cpu_out).max(axis=-1, keepdims=True) + 1
  np.testing.assert_allclose(gpu_out / scale, cpu_out / scale, **_tolerance(dtype))
  _assert_same_ids(gpu_in, cpu_in, f"sort {regularization} block_in")
  _assert_same_ids(gpu_ids, cpu_ids, f"sort {regularization} block_out")


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("op", ["ranks", "sort"])
def test_public_ops_with_native_impl_agree_on_gpu_and_cpu(gpu, dtype, regularization, op):
  x = _rows_with_ties(7, (2, 50, 3), dtype)  # leading dimensions and a non-last axis go through the front end
  fn = jax.jit(lambda x: getattr(otsort, op)(x, axis=1, epsilon=0.5, regularization=regularization, impl="native"))
  gpu_out = _on(gpu, fn, x)
  cpu_out = _on(jax.devices("cpu")[0], fn, x)
  np.testing.assert_allclose(gpu_out, cpu_out, **_tolerance(dtype))


def test_cuda_kernel_turns_non_finite_rows_into_nan_with_singleton_blocks(gpu):
  from otsort.pav import _projections  # pylint: disable=g-import-not-at-top

  x = _rows_with_ties(3, (5, 40), np.float32)
  x[1, 7] = np.nan
  x[2, 0] = np.inf
  x[3, 39] = -np.inf
  x[4, 5] = -np.nan
  fn = jax.jit(lambda x: _projections.project_scores(x, _ones(x), False, 0, "native"))
  out, ids = _on(gpu, fn, x)
  cpu_out, cpu_ids = _on(jax.devices("cpu")[0], fn, x)
  assert np.isnan(out[1:]).all()
  np.testing.assert_array_equal(ids[1:], np.broadcast_to(np.arange(40), (4, 40)))
  np.testing.assert_allclose(out[0], cpu_out[0], **_tolerance(np.float32))
  np.testing.assert_array_equal(ids, cpu_ids)

  sort_fn = jax.jit(lambda x: _projections.project_sort(x, _ones(x), True, "native"))
  out, block_in, block_out = _on(gpu, sort_fn, x)
  assert np.isnan(out[1:]).all() and not np.isnan(out[0]).any()
  np.testing.assert_array_equal(block_in[1:], np.broadcast_to(np.arange(40), (4, 40)))
  np.testing.assert_array_equal(block_out[1:], np.broadcast_to(np.arange(40), (4, 40)))


def test_cuda_kernel_treats_negative_zero_as_zero_and_keeps_ties_in_input_order(gpu):
  from otsort.pav import _projections  # pylint: disable=g-import-not-at-top

  x = np.array([[0.0, -0.0, 1.0, -0.0, 0.0, 1.0, -1.0]], np.float32)
  fn = jax.jit(lambda x: _projections.project_sort(x, 1e-3 * _ones(x), False, "native"))
  out, block_in, block_out = _on(gpu, fn, x)
  cpu = _on(jax.devices("cpu")[0], fn, x)
  np.testing.assert_allclose(out, cpu[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(block_in, cpu[1])
  np.testing.assert_array_equal(block_out, cpu[2])
  # Hard limit (epsilon -> 0): the decreasing sort, with the zeros of both signs in one run.
  np.testing.assert_allclose(out[0], [1, 1, 0, 0, 0, 0, -1], atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_cuda_kernel_accepts_empty_inputs(gpu, shape):
  from otsort.pav import _projections  # pylint: disable=g-import-not-at-top

  z = np.zeros(shape, np.float32)
  out, ids = _on(gpu, jax.jit(lambda z: _projections.project_scores(z, _ones(z), True, 0, "native")), z)
  assert out.shape == shape and ids.shape == shape
