"""Wall-clock timing of one benchmark cell: a compile/warm-up call, then the median of adaptive repeats.

A cell is one callable (already bound to its inputs) that runs the whole computation and waits for it
(``block_until_ready`` for JAX, plain return for torch). The first call compiles; the next is a warm-up that
also estimates the cost of a call; the number of samples and of calls per sample is then chosen so the cell
takes about ``cell_time`` seconds. The caller makes the first (compiling) call itself, to keep its output. The reported time is the median over samples of the mean call time within
a sample.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
  """One cell's result.

  Attributes:
    seconds: median seconds per call.
    samples: how many samples the median is over.
    inner: calls per sample.
    best: the fastest sample's seconds per call (a lower bound on a noisy machine).
  """

  seconds: float
  samples: int
  inner: int
  best: float


def _clock(fn: Callable[[], object], calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def time_call(fn: Callable[[], object], *, cell_time: float = 0.5, slow_call_s: float = 2.0,
              samples: int = 7) -> Timing:
  """Times ``fn`` (which must block until its result is ready and must have been called once already).

  Args:
    fn: the call to time, no arguments.
    cell_time: the wall time to spend on repeats, about.
    slow_call_s: calls slower than this get a single timed repeat after warm-up (so a 10 s call costs ~20 s,
      not minutes).
    samples: how many samples the median is over, for calls fast enough to afford them.

  Returns:
    A :class:`Timing`.
  """
  # The estimate is the fastest of a few warm-up calls (a shared machine makes single calls noisy).
  estimate = _clock(fn, 1)
  spent, calls = estimate, 1
  while estimate < slow_call_s and calls < 10 and spent < min(0.05, cell_time / 5):
    last = _clock(fn, 1)
    estimate, spent, calls = min(estimate, last), spent + last, calls + 1
  if estimate >= slow_call_s:
    return Timing(estimate, 1, 1, estimate)
  if estimate * samples >= cell_time:
    samples = max(3, min(25, round(cell_time / estimate)))
    inner = 1
  else:
    inner = max(1, min(10_000, math.ceil(cell_time / (samples * max(estimate, 1e-7)))))
  times = [_clock(fn, inner) for _ in range(samples)]
  return Timing(statistics.median(times), samples, inner, min(times))
