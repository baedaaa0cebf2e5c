"""The command line: every command has --help, works on good input, and refuses bad input with exit status 2 and
one line, leaving no output file behind; Ctrl-C at any point exits with status 130 and one line, leaving nothing.

Most tests call ``_cli.main`` in this process; the few that need a process of their own (Ctrl-C during an XLA
call, the demo) pay about 3 s each for importing JAX."""

import os
import pathlib
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import otsort
from otsort import _cli
import otsort.filters

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _otsort(*args, cwd=None):
  return subprocess.run(
    [sys.executable, "-m", "otsort", *map(str, args)], capture_output=True, text=True, cwd=cwd or _ROOT, timeout=300
  )


@pytest.mark.parametrize("command", [[], ["demo"], ["filter"]])
def test_every_command_has_help(command, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _cli.main([*command, "--help"])
  assert exit_info.value.code == 0
  assert "usage: otsort" in capsys.readouterr().out


def test_demo_prints_every_operation_on_both_backends():
  result = _otsort("demo")
  assert result.returncode == 0, result.stderr
  for label in (
    "hard sort",
    "sort (pav eps=0.5)",
    "ranks (pav-kl eps=0.5)",
    "quantiles (sinkhorn eps=0.05)",
    "top-2 mask (sinkhorn eps=0.05)",
  ):
    assert label in result.stdout


@pytest.fixture
def noisy_image(tmp_path):
  rng = np.random.default_rng(0)
  pixels = np.full((24, 20), 128, np.uint8)
  pixels[rng.random(pixels.shape) < 0.1] = 255
  path = tmp_path / "noisy.png"
  Image.fromarray(pixels).save(path)
  return path


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares ``width x height`` 1-bit pixels in 100 bytes: Pillow's size check runs on the header."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    + chunk(b"IEND", b"")
  )


def _left_behind(folder: pathlib.Path) -> list[str]:
  return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp") or path.name == "out.png")


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


@pytest.mark.parametrize(
  "arguments, message",
  [
    (["missing.png", "out.png"], "cannot read 'missing.png': no such file"),
    (["not_an_image.png", "out.png"], "cannot read 'not_an_image.png' as an image"),
    (["noisy.png", "out.jpg"], "OUT must be a .png file"),
    (["noisy.png", "no_such_folder/out.png"], "no such folder"),
    (["noisy.png", "out.png", "--q", "1.5"], "expected a number in [0, 1]"),
    (["noisy.png", "out.png", "--epsilon", "-1"], "expected a positive number"),
    (["noisy.png", "out.png", "--size", "0"], "size"),
    (["noisy.png", "out.png", "--size", "25"], "size must fit in the image, h <= H and w <= W with (H, W) = (24, 20)"),
    (["noisy.png", "out.png", "--size", str(10**12)], "got size = 1000000000000"),
    (["noisy.png", "out.png", "--backend", "torch"], "invalid choice: 'torch'"),
    (
      ["bomb.png", "out.png"],
      "cannot read 'bomb.png': the image has 400000000 pixels; the limit is "
      f"{Image.MAX_IMAGE_PIXELS} pixels (Pillow's guard against decompression bombs",
    ),
    (["noisy.png", "folder.png"], "cannot write OUT 'folder.png': it is a directory"),
    (["nan.tif", "out.png"], "cannot filter 'nan.tif': it has non-finite pixels (NaN or inf)"),
  ],
)
def test_filter_refuses_bad_input_with_status_2_one_line_and_no_output(
  tmp_path, noisy_image, arguments, message, monkeypatch, capsys
):
  (tmp_path / "not_an_image.png").write_text("this is not a PNG")
  (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))
  (tmp_path / "folder.png").mkdir()
  Image.fromarray(np.array([[0.5, np.nan], [0.25, 1.0]], np.float32)).save(tmp_path / "nan.tif")
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
  assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_an_image_over_pillows_warning_limit_is_refused_too(tmp_path, noisy_image, monkeypatch, capsys):
  # Pillow raises above twice MAX_IMAGE_PIXELS and only warns between the two: 480 pixels against a limit of 300.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", str(noisy_image), str(tmp_path / "out.png")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    f"otsort filter: error: cannot read {str(noisy_image)!r}: the image has 480 "
    "pixels; the limit is 300 pixels (Pillow's guard against decompression bombs, "
    "PIL.Image.MAX_IMAGE_PIXELS)\n"
  )
  assert _left_behind(tmp_path) == []


@pytest.fixture
def unwritable_folder(tmp_path):
  if hasattr(os, "geteuid") and os.geteuid() != 0:
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    yield folder
    folder.chmod(0o755)
  elif os.path.isdir("/proc/self"):
    yield pathlib.Path("/proc")  # root writes through permissions, but cannot create files here
  else:
    pytest.skip("no folder that this user cannot write")


def test_an_unwritable_output_is_refused_before_any_computation(noisy_image, unwritable_folder, monkeypatch, capsys):
  def too_early(*args, **kwargs):
    raise AssertionError("filtered before checking that OUT can be written")

  monkeypatch.setattr(otsort.filters, "quantile_filter", too_early)
  out = unwritable_folder / "out.png"
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", str(noisy_image), str(out)])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert stderr.startswith(f"otsort filter: error: cannot write OUT {str(out)!r}: ") and stderr.count("\n") == 1


def test_non_finite_results_are_not_written(tmp_path, noisy_image, monkeypatch, capsys):
  # Sinkhorn gives NaN at epsilon = 1e-30 in float32; the fake makes the test independent of that backend's fixes.
  monkeypatch.setattr(
    otsort.filters, "quantile_filter", lambda image, q, **kwargs: jnp.asarray(image).at[:2].set(jnp.nan)
  )
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", str(noisy_image), str(tmp_path / "out.png"), "--backend", "sinkhorn", "--epsilon", "1e-30"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    "otsort filter: error: the sinkhorn backend at epsilon = 1e-30 gave non-finite "
    "values (NaN or inf) for 40 of 480 pixels; nothing was written. Try a larger "
    "--epsilon.\n"
  )
  assert _left_behind(tmp_path) == []


def test_a_size_whose_windows_exceed_the_memory_is_refused_before_computing(tmp_path, noisy_image, monkeypatch, capsys):
  monkeypatch.setattr(_cli, "_memory_bytes", lambda: 2**19)  # 24 x 20 pixels x 10**2 float32 values: 0.18 MiB
  monkeypatch.setattr(otsort.filters, "quantile_filter", lambda image, q, **kwargs: image)
  assert _cli.main(["filter", str(noisy_image), str(tmp_path / "out.png"), "--size", "10"]) == 0
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", str(noisy_image), str(tmp_path / "big.png"), "--size", "20"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    "otsort filter: error: --size 20 on this 20x24 image needs at least 0.7 MiB for "
    "its windows, more than this machine's 0.5 MiB of memory; use a smaller --size\n"
  )
  assert _left_behind(tmp_path) == ["out.png"]


def test_outputs_get_the_mode_open_would_give_them(tmp_path, noisy_image):
  previous = os.umask(0o027)
  try:
    new, old = tmp_path / "new.png", tmp_path / "old.png"
    old.write_bytes(b"")
    old.chmod(0o604)
    for out in (new, old):
      assert _cli.main(["filter", str(noisy_image), str(out)]) == 0
  finally:
    os.umask(previous)
  assert stat.S_IMODE(new.stat().st_mode) == 0o640  # 0o666 less the umask, not tempfile's 0o600
  assert stat.S_IMODE(old.stat().st_mode) == 0o604  # a replaced file keeps its mode
  with Image.open(old) as result:
    assert result.size == (20, 24)


def _block(monkeypatch, package: str) -> None:
  """Makes ``import package`` (and its submodules) raise ImportError, as on an install without it."""
  for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, package, None)


def test_filter_without_pillow_names_the_extra_before_anything_else(tmp_path, noisy_image, monkeypatch, capsys):
  _block(monkeypatch, "PIL")
  monkeypatch.setattr(otsort.filters, "quantile_filter", lambda *args, **kwargs: pytest.fail("filtered"))
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["filter", str(noisy_image), str(tmp_path / "out.png")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    'otsort filter: error: image files need Pillow, which is not installed: pip install "otsort[cli]"\n'
  )
  assert _left_behind(tmp_path) == []


def test_demo_needs_neither_pillow_nor_matplotlib(monkeypatch, capsys):
  _block(monkeypatch, "PIL")
  _block(monkeypatch, "matplotlib")
  monkeypatch.setattr(otsort, "sort", lambda x, **kwargs: np.sort(x))  # no XLA: only the imports are in question
  for name in ("ranks", "topk_mask"):
    monkeypatch.setattr(otsort, name, lambda x, *args, **kwargs: np.zeros_like(x))
  monkeypatch.setattr(otsort, "quantile", lambda x, q, **kwargs: np.quantile(x, q))
  monkeypatch.setattr(otsort, "topk", lambda x, k, **kwargs: -np.sort(-x)[:k])
  assert _cli.main(["demo"]) == 0
  assert "sort (sinkhorn eps=0.05)" in capsys.readouterr().out


def test_the_library_works_without_pillow_and_matplotlib():
  # A fresh process where importing either fails, as on a base install, traces (all the Python code runs, nothing
  # compiles) every operation, a filter and a loss on both backends. (ott-jax imports matplotlib when it is there.)
  script = textwrap.dedent("""
      import sys
      sys.modules["PIL"] = sys.modules["matplotlib"] = None  # `import PIL` and `import matplotlib` now fail
      import jax
      import jax.numpy as jnp
      import otsort
      x = jnp.arange(12.0).reshape(3, 4)
      for backend in ("pav", "sinkhorn"):
        shapes = jax.eval_shape(lambda: (
            otsort.sort(x, backend=backend), otsort.ranks(x, backend=backend),
            otsort.quantile(x, 0.5, backend=backend), otsort.topk(x, 2, backend=backend),
            otsort.topk_mask(x, 2, backend=backend), otsort.filters.median_filter(jnp.ones((5, 5)), backend=backend),
            otsort.losses.spearman_loss(x, x)))
        print(backend, [s.shape for s in shapes])
  """)
  done = subprocess.run(
    [sys.executable, "-c", script],
    cwd=_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert done.returncode == 0, done.stderr
  shapes = "[(3, 4), (3, 4), (3,), (3, 2), (3, 4), (5, 5), (3,)]"
  assert done.stdout.splitlines() == [f"pav {shapes}", f"sinkhorn {shapes}"]


@pytest.mark.parametrize("arguments", [["compare"], ["compare", "--small", "--out", "report"], ["compare", "--help"]])
def test_compare_says_where_the_regularization_comparison_went(arguments, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(arguments)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    "otsort compare: error: the regularization comparison moved out of the library: "
    "run `python tutorials/comparing_regularizations.py` in a checkout of the "
    "repository\n"
  )
  assert (_ROOT / "tutorials" / "comparing_regularizations.py").is_file()


def test_help_lists_only_the_commands_there_are(capsys):
  with pytest.raises(SystemExit):
    _cli.main(["--help"])
  listed = re.findall(r"^    (\w+) ", capsys.readouterr().out, flags=re.MULTILINE)
  assert listed == ["demo", "filter"]


def test_filter_help_gives_the_backends_default_epsilons(capsys):
  # The parser does not import otsort (a fast --help), so the help writes the defaults out: keep them true.
  with pytest.raises(SystemExit):
    _cli.main(["filter", "--help"])
  help_text = " ".join(capsys.readouterr().out.split())
  assert f"{otsort.Pav.default_epsilon} for pav, {otsort.Sinkhorn.default_epsilon} for sinkhorn" in help_text


def test_demo_refuses_to_print_non_finite_values(monkeypatch, capsys):
  def fake(x, *args, backend, **kwargs):
    return np.full(3, np.nan if backend == "sinkhorn" else 0.0)

  for name in ("sort", "ranks", "quantile", "topk", "topk_mask"):
    monkeypatch.setattr(otsort, name, fake)
  with pytest.raises(SystemExit) as exit_info:
    _cli.main(["demo", "--epsilon-sinkhorn", "1e-30"])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err == (
    "otsort demo: error: sort (sinkhorn eps=1e-30) gave non-finite values [nan nan nan]; "
    "--epsilon-sinkhorn 1e-30 is too small for the sinkhorn backend: try a larger one\n"
  )


def _interrupt_at(monkeypatch, point: str) -> None:
  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  if point == "start-up":
    monkeypatch.setattr(_cli, "_parser", interrupt)
  elif point == "checking OUT":
    close = os.close

    def close_then_interrupt(descriptor):  # the first close is the probe file's, which must not stay
      close(descriptor)
      monkeypatch.setattr(os, "close", close)
      raise KeyboardInterrupt

    monkeypatch.setattr(os, "close", close_then_interrupt)
  elif point == "reading":
    monkeypatch.setattr(Image, "open", interrupt)
  elif point == "computing":
    monkeypatch.setattr(otsort.filters, "quantile_filter", interrupt)
  else:

    def half_written(self, file, **kwargs):
      file.write(b"\x89PNG half")
      raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", half_written)


@pytest.mark.parametrize("point", ["start-up", "checking OUT", "reading", "computing", "writing"])
def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tmp_path, noisy_image, point, monkeypatch, capsys):
  _interrupt_at(monkeypatch, point)
  with pytest.raises((SystemExit, KeyboardInterrupt)) as exit_info:
    _cli.main(["filter", str(noisy_image), str(tmp_path / "out.png")])
  assert exit_info.type is SystemExit and exit_info.value.code == 130
  prefix = "otsort" if point == "start-up" else "otsort filter"
  assert capsys.readouterr().err == f"{prefix}: interrupted\n"
  assert _left_behind(tmp_path) == []


# Prints a line once the filter's XLA computation is dispatched: the call returns before the computation ends.
_MARK_DISPATCH = textwrap.dedent("""
    import sys
    import otsort.filters
    from otsort import _cli
    quantile_filter = otsort.filters.quantile_filter
    def dispatched(*args, **kwargs):
      out = quantile_filter(*args, **kwargs)
      print("dispatched", file=sys.stderr, flush=True)
      return out
    otsort.filters.quantile_filter = dispatched
    sys.exit(_cli.main(sys.argv[1:]))
""")


def test_ctrl_c_during_a_long_computation_exits_at_once(tmp_path):
  # About 15 s of Sinkhorn on 2 CPU cores; without the worker thread, Ctrl-C waited for all of it.
  source = tmp_path / "big.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)).save(source)
  process = subprocess.Popen(
    [
      sys.executable,
      "-c",
      _MARK_DISPATCH,
      "filter",
      str(source),
      str(tmp_path / "out.png"),
      "--backend",
      "sinkhorn",
      "--size",
      "5",
    ],
    cwd=_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  watchdog = threading.Timer(300, process.kill)
  watchdog.start()
  try:
    assert process.stderr.readline() == "dispatched\n"
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    process.wait(timeout=60)
    elapsed = time.monotonic() - start
  finally:
    watchdog.cancel()
    process.kill()
  assert process.returncode == 130 and elapsed < 3, (process.returncode, elapsed)
  assert process.stderr.read() == "otsort filter: interrupted\n"
  assert sorted(path.name for path in tmp_path.iterdir()) == ["big.png"]


def test_ctrl_c_while_jax_is_imported_exits_130_with_one_line():
  # `import otsort` no longer imports JAX (the package's names load on first use), so the command line's own
  # handler is in place before the seconds of importing JAX start.
  script = (
    "import sys; from otsort import _cli; assert 'jax' not in sys.modules; print('ready', flush=True); "
    "sys.exit(_cli.main(['demo']))"
  )
  process = subprocess.Popen(
    [sys.executable, "-c", script],
    cwd=_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  try:
    assert process.stdout.readline() == "ready\n"
    time.sleep(0.2)  # inside the import of JAX (which takes seconds), before any output
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
  finally:
    process.kill()
  stderr = process.stderr.read()
  assert process.returncode == 130, (process.returncode, stderr)
  assert stderr == "otsort demo: interrupted\n"
