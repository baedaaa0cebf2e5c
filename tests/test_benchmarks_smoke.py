"""The benchmark harness runs end to end on one tiny size and writes a sane table and JSON (no timing claims)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # benchmarks/ sits beside otsort/ in the checkout; it is not installed
  sys.path.insert(0, str(_ROOT))

from benchmarks import __main__ as harness  # noqa: E402

_METHODS = ("pav-native-l2", "pav-native-kl", "pav-xla", "jnp")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  result = harness.main(
    [
      "--sizes",
      "2x64",
      "--methods",
      ",".join(_METHODS),
      "--cell-time",
      "0.005",
      "--no-memory",
      "--no-scaling",
      "--out",
      str(out),
    ]
  )
  return out, result


def test_harness_writes_the_markdown_table_and_json(report):
  out, result = report
  text = (out / "results.md").read_text()
  assert "| batch x n | method |" in text and "### targets" in text
  assert json.loads((out / "results.json").read_text())["cells"] == result["cells"]


def test_every_requested_cell_is_timed_or_says_why_not(report):
  _, result = report
  cells = result["cells"]
  assert {cell["key"] for cell in cells} == set(_METHODS)
  for cell in cells:
    if cell["key"] == "jnp" and cell["op"] == "ranks" and cell["mode"] == "fwd+bwd":
      assert cell["status"].startswith("skipped")  # argsort has no gradient
    else:
      assert cell["status"] == "ok", cell
      assert cell["seconds"] > 0 and cell["samples"] >= 1


def test_ratios_are_positive_and_argsort_is_its_own_unit(report):
  _, result = report
  for cell in result["cells"]:
    if cell["seconds"] is not None:
      assert cell["ratio_argsort"] > 0 and math.isfinite(cell["ratio_argsort"])
      assert cell["ratio_torchsort"] is None  # torchsort was not asked for
    if cell["key"] == "jnp" and cell["op"] == "ranks" and cell["mode"] == "fwd":
      assert cell["ratio_argsort"] == pytest.approx(1.0)


def test_soft_ranks_error_is_reported_and_native_agrees_with_xla(report):
  _, result = report
  mae = {(c["op"], c["key"]): c["mae"] for c in result["cells"] if c["mode"] == "fwd" and c["key"] != "jnp"}
  assert all(value is not None and value >= 0 for value in mae.values())
  for op in ("ranks", "sort"):
    assert mae[(op, "pav-native-l2")] == pytest.approx(mae[(op, "pav-xla")], rel=1e-4, abs=1e-5)


def test_torch_anchors_absent_are_listed_with_the_reason_not_a_crash(tmp_path, monkeypatch):
  for name in ("torch", "torchsort"):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed (the CI has no torch)
  result = harness.main(
    [
      "--sizes",
      "1x32",
      "--methods",
      "pav-native-l2,torch,torchsort,torchsort-kl",
      "--cell-time",
      "0.005",
      "--no-memory",
      "--no-scaling",
      "--out",
      str(tmp_path),
    ]
  )
  assert set(result["unavailable"]) == {"torch", "torchsort", "torchsort-kl"}
  assert all("torch" in reason for reason in result["unavailable"].values())
  assert {cell["key"] for cell in result["cells"]} == {"pav-native-l2", "jnp"}
  text = (tmp_path / "results.md").read_text()
  assert "Not run here" in text and "`torchsort-kl`:" in text
  judged = [t for t in result["targets"] if "torch" in t["target"]]
  assert judged and all(t["result"] == "n/a" for t in judged)


def test_torch_runs_on_as_many_threads_as_xla():
  from benchmarks import _methods

  threads, how = _methods.xla_cpu_threads()
  assert threads >= 1 and str(threads) in how


def test_interleaved_samples_take_turns():
  from benchmarks import _timing

  order = []
  timings = _timing.interleave(
    [lambda: order.append("a"), lambda: order.append("b")], [1.0, 1.0], cell_time=3.0, samples=5
  )
  assert order == ["a", "b"] * 3  # slow calls: 3 samples of one call each, round by round
  assert [t.samples for t in timings] == [3, 3] and all(len(t.per_sample) == 3 for t in timings)


def _cell(key, op, mode, batch, n, seconds, regularization="l2"):
  from benchmarks import _runner

  return _runner.Cell(
    op,
    batch,
    n,
    key,
    key,
    mode,
    "1",
    regularization,
    seconds=seconds,
    samples=3,
    best_seconds=seconds,
    per_sample=[seconds] * 3,
  )


def test_targets_judge_ratios_of_one_run_and_refuse_unequal_threads():
  from benchmarks import _report

  cells = [
    _cell("pav-native-l2", "ranks", "fwd+bwd", 64, 1000, 1.0),
    _cell("pav-native-kl", "ranks", "fwd+bwd", 64, 1000, 2.0, "kl"),
    _cell("torchsort", "ranks", "fwd+bwd", 64, 1000, 4.0),
    _cell("torchsort-kl", "ranks", "fwd+bwd", 64, 1000, 3.0, "kl"),
    _cell("torch", "sort", "fwd", 64, 1000, 1.5),
  ]
  rows = {t["target"]: t for t in _report.targets(cells, None, [], {"xla": 2, "torch": 2})}
  assert rows["ranks fwd+bwd 64x1000 L2 <= 0.5x torchsort soft_rank l2 fwd+bwd (same threads)"]["result"] == "PASS"
  assert rows["ranks fwd+bwd 64x1000 KL <= 0.5x torchsort soft_rank kl fwd+bwd (same threads)"]["result"] == "FAIL"
  assert rows["ranks fwd+bwd 64x1000 L2 <= 1x torch.sort fwd (same batch)"]["ratio"] == pytest.approx(1 / 1.5)
  assert rows["ranks fwd+bwd 64x1000: KL <= 1.5x L2"]["result"] == "FAIL"
  assert rows["ranks fwd+bwd 256x1000 L2 <= 1x torch.sort fwd (same batch)"]["result"] == "n/a"
  unequal = _report.targets(cells, None, [], {"xla": 2, "torch": 1})
  assert all(t["result"] == "n/a" for t in unequal if "torch" in t["target"])


def test_otsort_dir_replaces_the_installed_otsort(tmp_path):
  import subprocess

  (tmp_path / "otsort").mkdir()
  (tmp_path / "otsort" / "__init__.py").write_text("__version__ = 'copy'\n")
  code = (
    "from benchmarks import _provenance; import sys; _provenance.use(sys.argv[1]); import otsort; "
    "print(otsort.__version__, otsort.__file__)"
  )
  done = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)], cwd=_ROOT, capture_output=True, text=True, check=True
  )
  assert done.stdout.split() == ["copy", str(tmp_path.resolve() / "otsort" / "__init__.py")]


def test_the_harness_epsilons_are_the_backends_public_defaults():
  # The harness fixes its epsilons (they are also torchsort's and jaxopt's regularization strength, and it must run
  # on earlier commits), and its README calls them otsort's defaults: this keeps that true.
  from benchmarks import _methods
  import otsort

  assert _methods.PAV_EPSILON == otsort.Pav.default_epsilon
  assert _methods.SINKHORN_EPSILON == otsort.Sinkhorn.default_epsilon
