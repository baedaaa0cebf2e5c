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
kernel takes its scratch from a cache that keeps blocks of up to 1 GiB in all after a call (so a row pays its
page faults once), and a later call counts that scratch only when it needs a larger block.
``retained_bytes_per_element`` is what stays resident after the first call once its result is dropped.

The kernel's scratch is never cleared, so only what it writes becomes resident, and the PAV stack is written
only as deep as it grows: how deep depends on the data and on epsilon. At the methods' default (epsilon 1 on
standard normal rows) the soft ranks pool into a few blocks and their stack stays shallow; the soft sort's
does not. ``--epsilon 1e-9`` gives the ranks an (almost) full stack at n = 10^6..10^7, the worst case.

For JAX methods the child also reports XLA's own accounting of the compiled call (``temp_size_in_bytes``,
buffers XLA allocates besides inputs and outputs), which misses scratch that a custom call mallocs itself.

Run as ``python -m benchmarks._memory --method KEY --op sort,ranks --mode fwd,fwd+bwd --n 1e6,1e7 [--epsilon E]``:
each case (every combination of the lists) runs in its own fresh process, and each prints one JSON line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import functools
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


def _child(key: str, op: str, n: int, torch_threads: int, mode: str = "fwd+bwd", epsilon: float | None = None) -> dict:
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
    if epsilon is not None:
      if not isinstance(method, _methods.OtsortPav):
        return {"status": f"fails: --epsilon applies to the otsort pav methods only, not {key}"}
      import otsort

      fn = functools.partial(
        getattr(otsort, op), epsilon=epsilon, impl=method.impl, regularization=method.regularization
      )
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
  key: str,
  op: str,
  n: int,
  *,
  torch_threads: int = 1,
  timeout: float = 600.0,
  mode: str = "fwd+bwd",
  epsilon: float | None = None,
) -> dict:
  """Runs one case in a fresh interpreter; returns its JSON answer with the case (and ``mode``) added."""
  env = dict(os.environ, **_MALLOC_ENV)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
  case = {"method": key, "op": op, "n": n, "mode": mode}
  if epsilon is not None:
    case["epsilon"] = epsilon
  try:
    done = subprocess.run(
      [
        sys.executable,
        "-m",
        "benchmarks._memory",
        "--child",
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
        *([] if epsilon is None else ["--epsilon", repr(epsilon)]),
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


def _list(text: str, parse: Callable[[str], Any] = str) -> list:
  return [parse(item) for item in text.split(",") if item]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", required=True)
  parser.add_argument("--op", default="ranks", help="comma-separated: sort, ranks, ...")
  parser.add_argument("--n", required=True, help="comma-separated row lengths, e.g. 1e6,1e7")
  parser.add_argument("--torch-threads", type=int, default=1)
  parser.add_argument("--mode", default="fwd+bwd", help="comma-separated: fwd, fwd+bwd")
  parser.add_argument("--epsilon", type=float, default=None, help="pav methods only: instead of their default")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one case, in this process
  args = parser.parse_args()
  ops, modes, sizes = _list(args.op), _list(args.mode), _list(args.n, lambda item: int(float(item)))
  for mode in modes:
    if mode not in ("fwd", "fwd+bwd"):
      parser.error(f"--mode must be fwd or fwd+bwd; got {mode!r}")
  if args.child:
    print(json.dumps(_child(args.method, ops[0], sizes[0], args.torch_threads, modes[0], args.epsilon)))
    return
  for op in ops:
    for mode in modes:
      for n in sizes:
        case = measure(args.method, op, n, torch_threads=args.torch_threads, mode=mode, epsilon=args.epsilon)
        print(json.dumps(case), flush=True)


if __name__ == "__main__":
  main()
