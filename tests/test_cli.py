"""The command line: every command has --help, works on good input, and refuses bad input with exit status 2 and
one line, leaving no output file behind."""

import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from otsort import _cli

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _otsort(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "otsort", *map(str, args)], capture_output=True, text=True,
                        cwd=cwd or _ROOT, timeout=300)


@pytest.mark.parametrize("command", [[], ["demo"], ["filter"], ["compare"]])
def test_every_command_has_help(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _cli.main([*command, "--help"])
  assert exit_info.value.code == 0
  assert "usage: otsort" in capsys.readouterr().out


def test_demo_prints_every_operation_on_both_backends():
  result = _otsort("demo")
  assert result.returncode == 0, result.stderr
  for label in ("hard sort", "sort (pav eps=0.5)", "ranks (pav-kl eps=0.5)", "quantiles (sinkhorn eps=0.05)",
                "top-2 mask (sinkhorn eps=0.05)"):
    assert label in result.stdout


@pytest.fixture
def noisy_image(tmp_path):
  rng = np.random.default_rng(0)
  pixels = np.full((24, 20), 128, np.uint8)
  pixels[rng.random(pixels.shape) < 0.1] = 255
  path = tmp_path / "noisy.png"
  Image.fromarray(pixels).save(path)
  return path


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_filter_writes_a_png_that_removes_salt_noise(tmp_path, noisy_image, mode):
  source = tmp_path / f"in_{mode}.png"
  Image.open(noisy_image).convert(mode).save(source)
  out = tmp_path / "out.png"
  assert _cli.main(["filter", str(source), str(out), "--q", "0.5", "--size", "3", "--epsilon", "0.5"]) == 0
  with Image.open(out) as result:
    assert result.mode == mode and result.size == (20, 24)
    pixels = np.asarray(result, dtype=float)
  assert np.abs(pixels - 128).max() <= 1  # isolated salt pixels are gone


@pytest.mark.parametrize("arguments, message", [
    (["missing.png", "out.png"], "cannot read 'missing.png': no such file"),
    (["not_an_image.png", "out.png"], "cannot read 'not_an_image.png' as an image"),
    (["noisy.png", "out.jpg"], "OUT must be a .png file"),
    (["noisy.png", "no_such_folder/out.png"], "no such folder"),
    (["noisy.png", "out.png", "--q", "1.5"], "expected a number in [0, 1]"),
    (["noisy.png", "out.png", "--epsilon", "-1"], "expected a positive number"),
    (["noisy.png", "out.png", "--size", "0"], "size"),
    (["noisy.png", "out.png", "--backend", "torch"], "invalid choice: 'torch'"),
])
def test_filter_refuses_bad_input_with_status_2_one_line_and_no_output(tmp_path, noisy_image, arguments, message,
                                                                      monkeypatch, capsys):
  (tmp_path / "not_an_image.png").write_text("this is not a PNG")
  noisy_image.rename(tmp_path / "noisy.png")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", *arguments])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert "Traceback" not in stderr
  assert message in stderr.strip().splitlines()[-1]  # argparse's usage lines, then the one-line error
  assert stderr.count("error:") == 1
  assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.jpg").exists()
  assert not list(tmp_path.glob(".out.png.*"))  # no temporary file left behind


def test_compare_writes_its_table_and_plots(tmp_path, capsys):
  assert _cli.main(["compare", "--small", "--out", str(tmp_path / "report")]) == 0
  written = {path.name for path in (tmp_path / "report").iterdir()}
  assert {"comparison.md", "comparison.csv", "comparison.json", "comparison_error.png"} <= written
  assert "pav-l2" in capsys.readouterr().out
