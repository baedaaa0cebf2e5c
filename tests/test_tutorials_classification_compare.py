"""The top-k classification and the regularization-comparison tutorials run end to end in ``--small`` mode and
write what they promise: figures, tables, and printed numbers that parse and agree with what the question
claims. Both scripts run at once (two subprocesses), since each spends most of its time compiling.

The full-mode claim of ``tutorials/topk_classification.py`` (> 90% test accuracy with the soft 0/1 error) is
checked by hand, not here: it trains for 40 epochs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"classification": "tutorials/topk_classification.py", "compare": "tutorials/comparing_regularizations.py"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs both tutorials with ``--small --out DIR`` concurrently; ``{name: (stdout, out_dir)}``."""
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), MPLBACKEND="Agg"
  )
  procs = {}
  for name, script in SCRIPTS.items():
    out = tmp_path_factory.mktemp(name)
    procs[name] = (
      subprocess.Popen(
        [sys.executable, str(ROOT / script), "--small", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
      out,
    )
  results = {}
  for name, (proc, out) in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{SCRIPTS[name]} --small failed:\n{stdout}\n{stderr}"
    results[name] = (stdout, out)
  return results


def _nonempty_png(path: Path) -> bool:
  return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classification_tutorial_writes_its_figure_and_prints_an_accuracy_per_loss(runs):
  stdout, out = runs["classification"]
  assert _nonempty_png(out / "topk_classification.png")
  printed = dict(re.findall(r"test accuracy \[(.+?)\]: top-1 ([0-9.]+)", stdout))
  assert set(printed) == {"cross-entropy", "soft 0/1 error", "soft top-3 error"}
  summary = json.loads((out / "topk_classification.json").read_text())
  for name, top1 in printed.items():
    assert 0 <= float(top1) <= 1
    assert abs(float(top1) - summary[name]["test_top1"]) < 1e-4
  assert summary["cross-entropy"]["test_top1"] > 0.3  # one epoch on 512 images: well above chance (0.1)
  assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def test_comparison_tutorial_prints_its_table_and_numbers_and_writes_json_and_figures(runs):
  stdout, out = runs["compare"]
  for name in ("comparison_error.png", "comparison_grad_density.png", "comparison_time.png"):
    assert _nonempty_png(out / name)
  rows = json.loads((out / "comparison.json").read_text())
  assert len(rows) == 3 * 5  # three methods, five epsilons in --small mode
  assert re.search(r"^\| method \| epsilon \| sort_error \| ranks_error \|", stdout, flags=re.MULTILINE)
  assert len(re.findall(r"^\| (pav-l2|pav-kl|sinkhorn) \|", stdout, flags=re.MULTILINE)) == len(rows)
  for method in ("pav-l2", "pav-kl", "sinkhorn"):
    number = r"[0-9.e+-]+"
    assert re.search(
      rf"^ranks error \[{method}\] at epsilon {number}: {number}; at epsilon {number}: {number}$",
      stdout,
      flags=re.MULTILINE,
    ), method
    density = re.search(rf"^gradient density \[{method}\] at epsilon 0.1: ({number})$", stdout, flags=re.MULTILINE)
    assert density and 0 <= float(density[1]) <= 1, method
    assert re.search(rf"^time per call \[{method}\] at epsilon 0.1: {number} ms", stdout, flags=re.MULTILINE)


def _by_method(out: Path) -> dict[str, list[dict]]:
  rows = json.loads((out / "comparison.json").read_text())
  methods = {}
  for row in rows:
    methods.setdefault(row["method"], []).append(row)
  return {name: sorted(mine, key=lambda row: row["epsilon"]) for name, mine in methods.items()}


def test_comparison_error_decreases_as_epsilon_decreases(runs):
  for name, rows in _by_method(runs["compare"][1]).items():
    for key in ("sort_error", "ranks_error"):
      errors = [row[key] for row in rows]  # increasing epsilon
      assert all(a <= b + 1e-6 for a, b in zip(errors, errors[1:])), (name, key, errors)
      assert errors[0] < errors[-1], (name, key, errors)


def test_comparison_projection_gradients_are_sparse_at_small_epsilon_and_dense_at_large(runs):
  methods = _by_method(runs["compare"][1])
  for name in ("pav-l2", "pav-kl"):
    density = [row["ranks_grad_density"] for row in methods[name]]
    assert density[0] < 0.5 and density[-1] == 1.0, (name, density)
  # The L2 projection pools more than KL at the same epsilon: at epsilon = 1 it reaches every input, KL not yet.
  at_one = {name: next(r for r in methods[name] if r["epsilon"] == 1.0) for name in ("pav-l2", "pav-kl")}
  assert at_one["pav-l2"]["ranks_grad_density"] > at_one["pav-kl"]["ranks_grad_density"]


def test_comparison_l2_projection_has_fewer_nonzero_gradients_than_entropic_ot_at_moderate_epsilon(runs):
  methods = _by_method(runs["compare"][1])
  at = lambda name: next(r for r in methods[name] if abs(r["epsilon"] - 0.1) < 1e-9)["ranks_grad_density"]
  assert at("pav-l2") < at("sinkhorn")
