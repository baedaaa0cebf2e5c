"""Peak extra memory of one fwd+bwd call, measured in a fresh subprocess per case.

XLA's CPU buffers and the native kernels' scratch are malloc'ed by C++, invisible to ``tracemalloc``; the
kernel's own scratch is also invisible to XLA's ``memory_analysis()``. So the subprocess measures resident
memory, with the kernel's peak isolated like this:

1. glibc is told to serve every allocation of 64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``, which
   also turns off the dynamic threshold) and to return freed memory at once (``MALLOC_TRIM_THRESHOLD_=0``), so
   a freed buffer leaves the resident set instead of sitting in malloc's free lists for the next call to
   reuse unseen;
2. the inputs are allocated, the function compiled and called twice (the first call also starts XLA's
   thread pool), the results dropped;
3. the peak resident set (``VmHWM``) is reset to the current one by writing ``5`` to
   ``/proc/self/clear_refs`` (Linux >= 4.0), and ``VmRSS`` read;
4. one more call; extra = ``VmHWM - VmRSS`` before it, divided by n. It includes the output (the gradient,
   4 bytes per element), all temporaries and the kernels' scratch, and nothing allocated before the call.

For JAX methods the child also reports XLA's own accounting of the compiled call (``temp_size_in_bytes``,
buffers XLA allocates besides inputs and outputs), which misses scratch that a custom call mallocs itself.

Run as ``python -m benchmarks._memory --method KEY --op ranks --n N``; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import re
import subprocess
import sys

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


def _child(key: str, op: str, n: int, torch_threads: int) -> dict:
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
  x, w = _runner.inputs(1, n)
  call = method.prepare(op, "fwd+bwd", x, w)
  for _ in range(2):
    out = call()
    del out
  gc.collect()
  if not _reset_peak():
    return {"status": "fails: cannot reset the peak RSS (/proc/self/clear_refs)"}
  before = _status_kib("VmRSS")
  out = call()
  peak = _status_kib("VmHWM")
  del out
  result = {"status": "ok", "extra_bytes": (peak - before) * 1024, "bytes_per_element": (peak - before) * 1024 / n}
  if not isinstance(method, _methods._TorchMethod):
    import jax
    import jax.numpy as jnp

    fn = method._row_fn(op)
    compiled = jax.jit(jax.grad(lambda x, w: jnp.sum(w * fn(x)))).lower(jnp.asarray(x), jnp.asarray(w)).compile()
    analysis = compiled.memory_analysis()
    if analysis is not None:
      result["xla_temp_bytes_per_element"] = analysis.temp_size_in_bytes / n
  return result


def measure(key: str, op: str, n: int, *, torch_threads: int = 1, timeout: float = 600.0) -> dict:
  """Runs one case in a fresh interpreter; returns its JSON answer with the case added."""
  env = dict(os.environ, **_MALLOC_ENV)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
  case = {"method": key, "op": op, "n": n}
  try:
    done = subprocess.run([sys.executable, "-m", "benchmarks._memory", "--method", key, "--op", op, "--n", str(n),
                           "--torch-threads", str(torch_threads)],
                          cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
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
  args = parser.parse_args()
  print(json.dumps(_child(args.method, args.op, args.n, args.torch_threads)))


if __name__ == "__main__":
  main()
