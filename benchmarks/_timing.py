"""Wall-clock timing: a warm-up estimate per call, then samples, interleaved across the calls compared.

A cell is one callable (already bound to its inputs) that runs the whole computation and waits for it
(``block_until_ready`` for JAX, plain return for torch). The caller makes the first (compiling) call itself, to
keep its output. :func:`estimate` then makes a few warm-up calls and keeps the fastest.

:func:`interleave` times several cells together, round-robin: round 1 takes one sample of every cell, round 2
the next, and so on, so a change of load on a shared machine (another job starting, a thermal step) falls on
all the cells compared rather than on whichever ran last. A sample is ``inner`` back-to-back calls, with
``inner`` chosen so a cell's samples add up to about ``cell_time``. A cell's time is the median over its samples
of the mean call time within a sample; ``per_sample`` keeps them, so that two cells can also be compared sample by
sample (round by round).

:func:`time_call` times one cell alone (the GPU script uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math
import statistics
import time


@dataclasses.dataclass(frozen=True)
class Timing:
  """One cell's result.

  Attributes:
    seconds: median seconds per call.
    samples: how many samples the median is over.
    inner: calls per sample.
    best: the fastest sample's seconds per call (a lower bound on a noisy machine).
    per_sample: seconds per call of each sample, in the order taken (round by round when interleaved).
  """

  seconds: float
  samples: int
  inner: int
  best: float
  per_sample: tuple[float, ...] = ()


def _clock(fn: Callable[[], object], calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def estimate(fn: Callable[[], object], *, cell_time: float = 0.5, slow_call_s: float = 2.0) -> float:
  """The fastest of a few warm-up calls of ``fn`` (already called once), at most ~min(0.05 s, cell_time / 5)
  of them; a single call when the first is slower than ``slow_call_s``."""
  best = _clock(fn, 1)
  spent, calls = best, 1
  while best < slow_call_s and calls < 10 and spent < min(0.05, cell_time / 5):
    last = _clock(fn, 1)
    best, spent, calls = min(best, last), spent + last, calls + 1
  return best


def plan(estimate_s: float, *, cell_time: float, samples: int = 7) -> tuple[int, int]:
  """(samples, calls per sample) so that the cell's samples take about ``cell_time``: ``samples`` samples of
  several calls for fast calls, 3 to ``samples`` samples of one call for slow ones."""
  if estimate_s * samples >= cell_time:
    return max(3, min(samples, round(cell_time / max(estimate_s, 1e-9)))), 1
  return samples, max(1, min(10_000, math.ceil(cell_time / (samples * max(estimate_s, 1e-7)))))


def interleave(
  calls: Sequence[Callable[[], object]], estimates: Sequence[float], *, cell_time: float = 0.5, samples: int = 7
) -> list[Timing]:
  """Times every call (each already called once), round-robin: round r takes sample r of every call that has
  one. Returns one :class:`Timing` per call, in order."""
  plans = [plan(e, cell_time=cell_time, samples=samples) for e in estimates]
  times: list[list[float]] = [[] for _ in calls]
  for round_ in range(max((s for s, _ in plans), default=0)):
    for i, (fn, (count, inner)) in enumerate(zip(calls, plans)):
      if round_ < count:
        times[i].append(_clock(fn, inner))
  return [Timing(statistics.median(t), len(t), inner, min(t), tuple(t)) for t, (_, inner) in zip(times, plans)]


def time_call(
  fn: Callable[[], object], *, cell_time: float = 0.5, slow_call_s: float = 2.0, samples: int = 7
) -> Timing:
  """Times ``fn`` alone (it must block until its result is ready and must have been called once already).

  Args:
    fn: the call to time, no arguments.
    cell_time: the wall time to spend on repeats, about.
    slow_call_s: calls slower than this get no repeat after warm-up (so a 10 s call costs ~20 s, not minutes).
    samples: how many samples the median is over, for calls fast enough to afford them.

  Returns:
    A :class:`Timing`.
  """
  first = estimate(fn, cell_time=cell_time, slow_call_s=slow_call_s)
  if first >= slow_call_s:
    return Timing(first, 1, 1, first, (first,))
  return interleave([fn], [first], cell_time=cell_time, samples=samples)[0]
