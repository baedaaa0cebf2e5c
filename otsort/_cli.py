"""The ``otsort`` command line.

- ``otsort demo``: the soft operations of a small example, on both backends, as a table.
- ``otsort filter IN OUT``: a soft quantile (median by default) filter of an image file, written as PNG. Image
  files need Pillow, the ``cli`` extra (``pip install "otsort[cli]"``); the library itself never imports it.

Every error (bad arguments, missing or unreadable files, images over Pillow's decompression-bomb limit, unwritable
outputs, non-finite results, a missing optional dependency) exits with status 2 and one line
``otsort COMMAND: error: ...``. Ctrl-C at any point exits with status 130 and one line ``otsort COMMAND:
interrupted``. Output files are written to a temporary name beside them and renamed, so they are complete or absent,
with the mode a plain ``open()`` would give them.

Long computations run in a worker thread while the main thread waits: a running XLA call holds its thread until it
returns, and Python handles signals only in the main thread, so this is what lets Ctrl-C act at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import contextlib
import os
import pathlib
import re
import secrets
import signal
import stat
import sys
import threading
from typing import Any
import warnings

import numpy as np

_DEMO_X = np.array([2.0, -1.0, 0.5, 3.0, 0.7], dtype=np.float32)

# Temporary files being written, by name. A name is added before its file is created, so that an interrupt at any
# point can remove it; the interrupt handler removes whatever is left.
_TEMPORARIES: set[str] = set()
# Set when the worker thread's computation ends; unset while it runs, when an interrupt must leave with os._exit.
_WORKER_DONE: threading.Event | None = None


# `otsort compare` ran the regularization comparison, which is no longer part of the library.
_MOVED_COMPARE = (
  "the regularization comparison moved out of the library: run "
  "`python tutorials/comparing_regularizations.py` in a checkout of the repository"
)


class _UsageError(Exception):
  """A problem with the command's input: reported in one line, exit status 2."""


def _format_row(label: str, values) -> str:
  return f"{label:<30}" + " ".join(f"{v:8.3f}" for v in np.atleast_1d(np.asarray(values, dtype=float)))


def _compute(fn: Callable[..., Any], *args: Any) -> Any:
  """``fn(*args)`` in a worker thread, the main thread waiting in short steps so that it sees Ctrl-C at once."""
  global _WORKER_DONE
  if threading.current_thread() is not threading.main_thread():
    return fn(*args)  # signals reach only the main thread: nothing to gain
  outcome: dict[str, Any] = {}
  done = _WORKER_DONE = threading.Event()

  def work() -> None:
    try:
      outcome["value"] = fn(*args)
    except BaseException as error:  # pylint: disable=broad-exception-caught; re-raised in the main thread
      outcome["error"] = error
    finally:
      done.set()

  threading.Thread(target=work, name="otsort-compute", daemon=True).start()
  # Not Thread.join: in CPython 3.11, Ctrl-C inside join() marks the still-running thread as stopped (bpo-45274's
  # fix). The timeout wakes us within 0.1 s where the signal lands on another thread.
  while not done.wait(0.1):
    pass
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def _demo_rows(x: np.ndarray, k: int, backend: str, epsilon: float, options: dict[str, str]) -> list[tuple[str, Any]]:
  import otsort  # here, so that `otsort --help` stays fast

  tag = backend + (f"-{options['regularization']}" if options else "") + f" eps={epsilon:g}"
  kw = dict(epsilon=epsilon, backend=backend, **options)
  rows = [
    (f"sort ({tag})", otsort.sort(x, **kw)),
    (f"ranks ({tag})", otsort.ranks(x, **kw)),
    (f"quantiles ({tag})", otsort.quantile(x, [0.25, 0.5, 0.75], **kw)),
    (f"top-{k} ({tag})", otsort.topk(x, k, **kw)),
    (f"top-{k} mask ({tag})", otsort.topk_mask(x, k, **kw)),
  ]
  return [(label, np.asarray(values)) for label, values in rows]


def demo(args: argparse.Namespace) -> None:
  x = _DEMO_X
  k = 2
  blocks = []
  for backend, options, epsilon in (
    ("pav", {}, args.epsilon_pav),
    ("pav", {"regularization": "kl"}, args.epsilon_pav),
    ("sinkhorn", {}, args.epsilon_sinkhorn),
  ):
    blocks.append(rows := _compute(_demo_rows, x, k, backend, epsilon, options))
    for label, values in rows:  # checked before anything is printed: a table of NaN explains nothing
      if not np.isfinite(values).all():
        raise _UsageError(
          f"{label} gave non-finite values {values}; --epsilon-{backend} {epsilon:g} is too small "
          f"for the {backend} backend: try a larger one"
        )
  print(_format_row("x", x))
  print(_format_row("hard sort", np.sort(x)))
  print(_format_row("hard ranks", np.argsort(np.argsort(x))))
  print(_format_row("hard quantiles 0.25 0.5 0.75", np.quantile(x, [0.25, 0.5, 0.75])))
  print(_format_row(f"hard top-{k}", -np.sort(-x)[:k]))
  for rows in blocks:
    print()
    for label, values in rows:
      print(_format_row(label, values))


def _pillow() -> Any:
  """``PIL.Image``, or a usage error naming the extra that installs it."""
  try:
    from PIL import Image
  except ImportError:
    raise _UsageError('image files need Pillow, which is not installed: pip install "otsort[cli]"') from None
  return Image


def _read_image(path: pathlib.Path) -> tuple[np.ndarray, str]:
  """The image as floats in [0, 1], ``[H, W]`` or ``[H, W, 3]``, and the PIL mode to write it back in."""
  Image = _pillow()

  if not path.is_file():
    raise _UsageError(f"cannot read {str(path)!r}: no such file")
  try:
    with warnings.catch_warnings():
      # Pillow only warns between MAX_IMAGE_PIXELS and twice that; every such image would take gigabytes here.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image.load()
        mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        if image.mode in ("I", "I;16", "F"):
          pixels = np.asarray(image, dtype=np.float64)
          if not np.isfinite(pixels).all():
            raise _UsageError(f"cannot filter {str(path)!r}: it has non-finite pixels (NaN or inf)")
          scale = 65535.0 if pixels.max() > 255 else 255.0
          return np.clip(pixels / scale, 0, 1).astype(np.float32), mode
        return np.asarray(image.convert(mode), dtype=np.float32) / 255.0, mode
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found[1])} pixels" if found else "too many pixels"
    raise _UsageError(
      f"cannot read {str(path)!r}: the image has {size}; the limit is {Image.MAX_IMAGE_PIXELS} "
      "pixels (Pillow's guard against decompression bombs, PIL.Image.MAX_IMAGE_PIXELS)"
    ) from None
  except (Image.UnidentifiedImageError, OSError, ValueError) as error:
    raise _UsageError(f"cannot read {str(path)!r} as an image: {error}") from None


def _create_temporary(path: pathlib.Path) -> tuple[int, str]:
  """A new, empty file beside ``path`` (descriptor, name), with the mode that ``open(path, "w")`` would give."""
  for _ in range(100):
    name = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
    _TEMPORARIES.add(name)
    try:
      # 0o666 less the umask, as open() creates files (tempfile.mkstemp would make it 0o600).
      descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except FileExistsError:
      _TEMPORARIES.discard(name)  # someone else's
      continue
    except OSError:
      _TEMPORARIES.discard(name)  # not created
      raise
    return descriptor, name  # an interrupt from here on leaves the name registered, and the handler removes it
  raise FileExistsError(f"no free temporary name beside {str(path)!r}")


def _remove_temporary(name: str) -> None:
  with contextlib.suppress(OSError):
    os.unlink(name)
  _TEMPORARIES.discard(name)


def _check_writable(path: pathlib.Path, what: str) -> None:
  """Fails now, before any computation, where writing ``path`` would fail later; ``what`` names it in the error."""
  if path.is_dir():
    raise _UsageError(f"cannot write {what}: it is a directory")
  try:
    descriptor, name = _create_temporary(path)
  except OSError as error:
    raise _UsageError(f"cannot write {what}: {error.strerror or error}") from None
  os.close(descriptor)
  _remove_temporary(name)


def _write_atomically(path: pathlib.Path, write: Callable[[Any], None]) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it to ``path``: complete or absent."""
  descriptor, name = _create_temporary(path)
  try:
    with os.fdopen(descriptor, "wb") as file:
      write(file)
      file.flush()
      os.fsync(file.fileno())  # the bytes reach the disk before the new name does
    with contextlib.suppress(FileNotFoundError):
      os.chmod(name, stat.S_IMODE(os.stat(path).st_mode))  # replacing a file keeps its mode, as open() would
    os.replace(name, path)
  except BaseException:
    _remove_temporary(name)
    raise
  _TEMPORARIES.discard(name)


def _memory_bytes() -> int | None:
  """This machine's physical memory, where the system says."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):
    return None


def _format_bytes(count: int) -> str:
  return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def filter_image(args: argparse.Namespace) -> None:
  Image = _pillow()  # first: the command cannot run without it
  output = pathlib.Path(args.output)
  if output.suffix.lower() != ".png":
    raise _UsageError(f"OUT must be a .png file; got {str(output)!r}")
  if not output.parent.is_dir():
    raise _UsageError(f"cannot write {str(output)!r}: no such folder {str(output.parent)!r}")
  _check_writable(output, f"OUT {str(output)!r}")
  pixels, mode = _read_image(pathlib.Path(args.input))
  # The filter holds every pixel's window at once, [H, W, (C,) size**2] float32 values (sizes past the image are
  # the filter's own error). Past the machine's memory it would swap or be killed rather than fail.
  needed, memory = pixels.size * args.size**2 * 4, _memory_bytes()
  if 1 <= args.size <= min(pixels.shape[:2]) and memory is not None and needed > memory:
    raise _UsageError(
      f"--size {args.size} on this {pixels.shape[1]}x{pixels.shape[0]} image needs at least "
      f"{_format_bytes(needed)} for its windows, more than this machine's {_format_bytes(memory)} "
      "of memory; use a smaller --size"
    )

  import otsort.filters

  def run() -> np.ndarray:
    return np.asarray(
      otsort.filters.quantile_filter(pixels, args.q, size=args.size, epsilon=args.epsilon, backend=args.backend)
    )  # np.asarray waits for XLA

  try:
    filtered = _compute(run)
  except ValueError as error:
    raise _UsageError(str(error)) from None
  epsilon = "the backend's default epsilon" if args.epsilon is None else f"epsilon = {args.epsilon:g}"
  if not np.isfinite(filtered).all():
    raise _UsageError(
      f"the {args.backend} backend at {epsilon} gave non-finite values (NaN or inf) for "
      f"{np.count_nonzero(~np.isfinite(filtered))} of {filtered.size} pixels; nothing was written. "
      "Try a larger --epsilon."
    )
  result = Image.fromarray(np.round(np.clip(filtered, 0, 1) * 255).astype(np.uint8), mode=mode)
  try:
    _write_atomically(output, lambda file: result.save(file, format="PNG"))
  except OSError as error:
    raise _UsageError(f"cannot write OUT {str(output)!r}: {error.strerror or error}") from None
  print(
    f"wrote {output} ({pixels.shape[1]}x{pixels.shape[0]}, q={args.q:g}, size={args.size}, "
    f"backend={args.backend}, epsilon={'default' if args.epsilon is None else f'{args.epsilon:g}'})"
  )


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
  if not np.isfinite(value) or value <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
  return value


def _level(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
  if not 0 <= value <= 1:
    raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
  return value


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="otsort", description="Differentiable sorting, ranking, quantiles and top-k for JAX."
  )
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  demo_parser = commands.add_parser(
    "demo",
    help="soft operations of a small example on both backends",
    description="Print the soft sort, ranks, quartiles, top-2 values and top-2 "
    "mask of a small example beside the hard ones, with pav (L2 and KL "
    "regularization) and sinkhorn.",
  )
  demo_parser.add_argument(
    "--epsilon-pav", type=_positive_float, default=0.5, metavar="E", help="epsilon of the pav backend (default: 0.5)"
  )
  demo_parser.add_argument(
    "--epsilon-sinkhorn",
    type=_positive_float,
    default=0.05,
    metavar="E",
    help="epsilon of the sinkhorn backend (default: 0.05)",
  )
  demo_parser.set_defaults(run=demo)

  filter_parser = commands.add_parser(
    "filter",
    help="soft quantile (median) filter of an image file",
    description="Filter an image (grayscale, or RGB channel by channel) with a "
    "soft quantile filter, the soft median by default, and write the result as "
    'PNG. Needs Pillow: pip install "otsort[cli]".',
  )
  filter_parser.add_argument(
    "input", metavar="IN", help="input image (any format Pillow reads, up to PIL.Image.MAX_IMAGE_PIXELS pixels)"
  )
  filter_parser.add_argument("output", metavar="OUT", help="output PNG file")
  filter_parser.add_argument("--q", type=_level, default=0.5, help="quantile level in [0, 1] (default: 0.5)")
  filter_parser.add_argument(
    "--size",
    type=int,
    default=3,
    help="window side: size x size pixels, at most the image's height and width (default: 3)",
  )
  filter_parser.add_argument(
    "--epsilon",
    type=_positive_float,
    default=None,
    help="regularization strength, > 0 (default: the backend's, 1.0 for pav, 0.01 for sinkhorn)",
  )
  filter_parser.add_argument(
    "--backend", choices=("pav", "sinkhorn"), default="pav", help="soft sorting backend (default: pav)"
  )
  filter_parser.set_defaults(run=filter_image)
  return parser


def _interrupted(prefix: str) -> None:
  """Ctrl-C: removes the temporary files, says so in one line, exits with status 130."""
  in_main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None  # a second Ctrl-C waits for us
  for name in list(_TEMPORARIES):
    _remove_temporary(name)
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  sys.stderr.write(f"{prefix}: interrupted\n")
  sys.stderr.flush()
  if _WORKER_DONE is not None and not _WORKER_DONE.is_set():
    # The worker is still inside a computation that cannot be stopped. A normal exit would tear JAX down beneath
    # it (2 to 4 s here, and the worker may wake into a finalized interpreter); nothing of ours needs the exit
    # handlers: the temporary files are gone and the streams are flushed.
    os._exit(130)  # pylint: disable=protected-access
  if previous is not None:
    signal.signal(signal.SIGINT, previous)
  raise SystemExit(130)


def main(argv: Sequence[str] | None = None) -> int:
  prefix = "otsort"
  try:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # the command that moved out: say where it went
      prefix = "otsort compare"
      raise _UsageError(_MOVED_COMPARE)
    args = parser.parse_args(argv)
    prefix = f"otsort {args.command}"
    args.run(args)
  except _UsageError as error:
    parser.exit(2, f"{prefix}: error: {error}\n")
  except KeyboardInterrupt:
    _interrupted(prefix)
  return 0


if __name__ == "__main__":
  sys.exit(main())
