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

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = ("soft_median_filter", "soft_operators")
FIGURES = {"soft_median_filter": ("soft_median_filter.png",),
           "soft_operators": ("soft_operators.png", "soft_operators_epsilon.png")}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{tutorial: (completed process, output folder)}, both run concurrently with ``--small``."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
         "MPLBACKEND": "Agg"}
  started = {}
  for name in TUTORIALS:
    out = tmp_path_factory.mktemp(name)
    command = [sys.executable, str(ROOT / "tutorials" / f"{name}.py"), "--small", "--out", str(out)]
    started[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True), out
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
  assert {"noisy", "hard median (scipy)", "mean filter"} <= psnr.keys(), process.stdout
  soft = {label: value for label, value in psnr.items() if label.startswith("soft median")}
  assert any(label.startswith("soft median pav") for label in soft), process.stdout
  for label, value in soft.items():
    assert value > psnr["noisy"] + 3.0, f"{label} barely denoises"
  # At its smaller epsilon each backend's soft median is within 0.5 dB of the hard one, above the mean filter.
  for backend in ("pav", "sinkhorn"):
    near_hard = [v for label, v in soft.items() if label.startswith(f"soft median {backend}")][:1]
    for value in near_hard:
      assert value > psnr["hard median (scipy)"] - 0.5 and value > psnr["mean filter"], process.stdout


def test_soft_sort_and_ranks_lines_never_cross(runs):
  process, _ = runs["soft_operators"]
  crossings = numbers(process.stdout, r"^crossings (\w+ \w+): (\d+)$")
  assert {"pav sort", "pav ranks"} <= crossings.keys(), process.stdout
  assert all(count == 0 for count in crossings.values()), crossings


def test_soft_operators_prints_every_operator_on_each_backend(runs):
  process, _ = runs["soft_operators"]
  for operator in ("sort", "ranks", "quantile", "topk", "topk_mask"):
    assert re.search(rf"^{operator}\b.* pav\s+-?\d", process.stdout, flags=re.MULTILINE), operator
