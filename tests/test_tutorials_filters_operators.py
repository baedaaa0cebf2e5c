"""The soft median filter and soft operators tutorials run end to end (``--small``) and show what they claim.

Both scripts run at once, each in its own Python process (they are separate programs, and this halves the wall
time on two cores); the tests then read their printed numbers and the figures they wrote.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import otsort

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = ("soft_median_filter", "soft_operators")
FIGURES = {
  "soft_median_filter": ("soft_median_filter.png",),
  "soft_operators": ("soft_operators.png", "soft_operators_epsilon.png"),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{tutorial: (completed process, output folder)}, both run concurrently with ``--small``."""
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    "MPLBACKEND": "Agg",
  }
  started = {}
  for name in TUTORIALS:
    out = tmp_path_factory.mktemp(name)
    command = [sys.executable, str(ROOT / "tutorials" / f"{name}.py"), "--small", "--out", str(out)]
    started[name] = (
      subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
      out,
    )
  results = {}
  for name, (process, out) in started.items():
    stdout, stderr = process.communicate(timeout=300)
    results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), out
  return results


def numbers(stdout: str, pattern: str) -> dict[str, float]:
  """{label: value} from the printed lines matching ``pattern`` (two groups: label, number)."""
  return {label: float(value) for label, value in re.findall(pattern, stdout, flags=re.MULTILINE)}


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_and_writes_its_figures(runs, name):
  process, out = runs[name]
  assert process.returncode == 0, f"{name} failed:\n{process.stdout}\n{process.stderr[-3000:]}"
  for figure in FIGURES[name]:
    path = out / figure
    assert path.is_file(), f"{name} did not write {figure}"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, f"{figure} is not a real PNG figure"


def test_soft_median_denoises_like_the_hard_median(runs):
  process, _ = runs["soft_median_filter"]
  psnr = numbers(process.stdout, r"^PSNR (.+): (-?[\d.]+) dB$")
  soft = {
    "pav": ("soft median pav eps=3", "soft median pav eps=30"),
    "sinkhorn": ("soft median sinkhorn eps=0.01", "soft median sinkhorn eps=0.1"),
  }
  expected = {"noisy", "hard median (scipy)", "mean filter", *soft["pav"], *soft["sinkhorn"]}
  assert expected <= psnr.keys(), process.stdout
  for label in (*soft["pav"], *soft["sinkhorn"]):
    assert psnr[label] > psnr["noisy"] + 3.0, f"{label} barely denoises"
  # At its smaller epsilon each backend's soft median is within 0.5 dB of the hard one, above the mean filter.
  for backend, (smaller, _) in soft.items():
    assert psnr[smaller] > psnr["hard median (scipy)"] - 0.5, (backend, psnr)
    assert psnr[smaller] > psnr["mean filter"], (backend, psnr)


def test_soft_sort_and_ranks_lines_never_cross_on_either_backend(runs):
  process, _ = runs["soft_operators"]
  crossings = numbers(process.stdout, r"^crossings (\w+ \w+): (\d+)$")
  assert crossings.keys() == {"pav sort", "pav ranks", "sinkhorn sort", "sinkhorn ranks"}, process.stdout
  assert all(count == 0 for count in crossings.values()), crossings


@pytest.mark.parametrize("backend", ["pav", "sinkhorn"])
def test_soft_operators_prints_every_operator_on_each_backend(runs, backend):
  process, _ = runs["soft_operators"]
  for operator, count in (("sort", 5), ("ranks", 5), ("quantile", 3), ("topk", 2), ("topk_mask", 5)):
    found = re.search(rf"^{operator}\b.* {backend}((?:\s+-?\d+\.\d+)+)$", process.stdout, flags=re.MULTILINE)
    assert found, (operator, backend, process.stdout)
    values = [float(v) for v in found[1].split()]
    assert len(values) == count and all(np.isfinite(values)), (operator, backend, values)


def test_soft_operators_prints_the_backends_public_default_epsilons(runs):
  process, _ = runs["soft_operators"]
  expected = f"default epsilon: pav {otsort.Pav.default_epsilon:g}, sinkhorn {otsort.Sinkhorn.default_epsilon:g}"
  assert expected in process.stdout.splitlines(), process.stdout
