"""Peak extra memory of one forward (``fwd``) or forward+backward (``fwd+bwd``) call, in a fresh process per case.

XLA's CPU buffers and the native kernels' scratch are malloc'ed by C++, invisible to ``tracemalloc``; the
kernel's own scratch is also invisible to XLA's ``memory_analysis()``. So the subprocess measures resident
memory:

1. glibc is told to serve every allocation of 64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``, which
   also turns off the dynamic threshold) and to return freed memory at once (``MALLOC_TRIM_THRESHOLD_=0``), so
   a freed buffer leaves the resident set instead of sitting in malloc's free lists for the next call to
   reuse unseen;
2. the inputs ``x`` and ``w`` (one float32 row of n) are materialised and the call compiled ahead of time
   (``jit(...).lower(...).compile()``), so neither counts;
3. for each of three calls, the peak resident set (``VmHWM``) is reset to the current one by writing ``5`` to
   ``/proc/self/clear_refs`` (Linux >= 4.0), ``VmRSS`` read, the call made; its extra memory is ``VmHWM`` minus
   that ``VmRSS``. It includes the output (the values in ``fwd``, the gradient in ``fwd+bwd``: 4 bytes per
   element), XLA's temporaries and the kernels' scratch.

The figure (``bytes_per_element``) is the largest of the three, divided by n. The first call matters: the CPU
kernel keeps its scratch in per-thread (``thread_local``) buffers that it grows on first use and keeps, so a
later call counts it only when it lands on a thread that has not run a row of that size before (the reason a
steady-state measurement can read 16 or 72 bytes per element for the same call). ``retained_bytes_per_element``
is what stays resident after the first call once its result is dropped.

For JAX methods the child also reports XLA's own accounting of the compiled call (``temp_size_in_bytes``,
buffers XLA allocates besides inputs and outputs), which misses scratch that a custom call mallocs itself.

Run as ``python -m benchmarks._memory --method KEY --op ranks --n N [--mode fwd]``; it prints one JSON line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import gc
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as status:
    return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as refs:
      refs.write("5")
    return True
  except OSError:
    return False


def _peak_of(call: Callable[[], Any]) -> tuple[int, int]:
  """(peak resident memory during ``call()`` above the resident memory before it, memory still resident after it
  once its result is dropped), in bytes."""
  gc.collect()
  _reset_peak()
  before = _status_kib("VmRSS")
  out = call()
  peak = _status_kib("VmHWM")
  del out
  gc.collect()
  return (peak - before) * 1024, (_status_kib("VmRSS") - before) * 1024


def _child(key: str, op: str, n: int, torch_threads: int, mode: str = "fwd+bwd") -> dict:
  from benchmarks import _methods
  from benchmarks import _provenance
  from benchmarks import _runner

  _provenance.use_from_environment()
  method = {m.key: m for m in _methods.all_methods()}[key]
  if isinstance(method, _methods._TorchMethod):
    method.threads = torch_threads
  reason = method.unavailable()
  if reason is not None:
    return {"status": f"skipped: {reason}"}
  if not _reset_peak():
    return {"status": "fails: cannot reset the peak RSS (/proc/self/clear_refs)"}
  x, w = _runner.inputs(1, n)
  result = {"status": "ok"}
  if isinstance(method, _methods._TorchMethod):
    call = method.prepare(op, mode, x, w)
    first, retained = _peak_of(call)  # torch compiles nothing
  else:
    import jax
    import jax.numpy as jnp

    fn = method._row_fn(op)  # pylint: disable=protected-access
    xd, wd = jnp.asarray(x), jnp.asarray(w)  # the inputs, materialised before anything is measured
    if mode == "fwd":
      compiled = jax.jit(fn).lower(xd).compile()
      call = lambda: compiled(xd).block_until_ready()
    else:
      compiled = jax.jit(jax.grad(lambda x, w: jnp.sum(w * fn(x)))).lower(xd, wd).compile()
      call = lambda: compiled(xd, wd).block_until_ready()
    analysis = compiled.memory_analysis()
    if analysis is not None:
      result["xla_temp_bytes_per_element"] = analysis.temp_size_in_bytes / n
    first, retained = _peak_of(call)  # compiled ahead: the first execution, without the compiler
  later = [_peak_of(call)[0] for _ in range(2)]
  result.update(
    {
      "first_bytes_per_element": first / n,
      "retained_bytes_per_element": retained / n,
      "later_bytes_per_element": [b / n for b in later],
      "bytes_per_element": max(first, *later) / n,
      "extra_bytes": max(first, *later),
    }
  )
  return result


def measure(
  key: str, op: str, n: int, *, torch_threads: int = 1, timeout: float = 600.0, mode: str = "fwd+bwd"
) -> dict:
  """Runs one case in a fresh interpreter; returns its JSON answer with the case (and ``mode``) added."""
  env = dict(os.environ, **_MALLOC_ENV)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
  case = {"method": key, "op": op, "n": n, "mode": mode}
  try:
    done = subprocess.run(
      [
        sys.executable,
        "-m",
        "benchmarks._memory",
        "--method",
        key,
        "--op",
        op,
        "--n",
        str(n),
        "--torch-threads",
        str(torch_threads),
        "--mode",
        mode,
      ],
      cwd=_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return {**case, "status": f"fails: timed out after {timeout:g} s"}
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {**case, "status": f"fails: exit {done.returncode}: {tail}"}
  return {**case, **json.loads(lines[-1])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", required=True)
  parser.add_argument("--op", default="ranks")
  parser.add_argument("--n", type=int, required=True)
  parser.add_argument("--torch-threads", type=int, default=1)
  parser.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd+bwd")
  args = parser.parse_args()
  print(json.dumps(_child(args.method, args.op, args.n, args.torch_threads, args.mode)))


if __name__ == "__main__":
  main()
