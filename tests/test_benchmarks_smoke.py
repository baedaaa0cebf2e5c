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
  result = harness.main(["--sizes", "2x64", "--methods", ",".join(_METHODS), "--cell-time", "0.005",
                         "--no-memory", "--no-scaling", "--out", str(out)])
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
