"""The ``otsort`` command line.

- ``otsort demo``: the soft operations of a small example, on both backends, as a table.
- ``otsort filter IN OUT``: a soft quantile (median by default) filter of an image file, written as PNG.
- ``otsort compare``: the regularization comparison (L2, KL, entropic OT across epsilon), table and plots.

Bad arguments, missing files and unreadable images exit with status 2 and a one-line message; output files are
written to a temporary name and renamed, so they are complete or absent.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Sequence

import numpy as np

_DEMO_X = np.array([2.0, -1.0, 0.5, 3.0, 0.7], dtype=np.float32)


class _UsageError(Exception):
  """A problem with the command's input: reported in one line, exit status 2."""


def _format_row(label: str, values) -> str:
  return f"{label:<30}" + " ".join(f"{v:8.3f}" for v in np.atleast_1d(np.asarray(values, dtype=float)))


def demo(args: argparse.Namespace) -> None:
  import otsort  # here, so that `otsort --help` stays fast

  x = _DEMO_X
  k = 2
  print(_format_row("x", x))
  print(_format_row("hard sort", np.sort(x)))
  print(_format_row("hard ranks", np.argsort(np.argsort(x))))
  print(_format_row("hard quantiles 0.25 0.5 0.75", np.quantile(x, [0.25, 0.5, 0.75])))
  print(_format_row(f"hard top-{k}", -np.sort(-x)[:k]))
  for backend, options, epsilon in (("pav", {}, args.epsilon_pav), ("pav", {"regularization": "kl"}, args.epsilon_pav),
                                    ("sinkhorn", {}, args.epsilon_sinkhorn)):
    tag = backend + (f"-{options['regularization']}" if options else "") + f" eps={epsilon:g}"
    kw = dict(epsilon=epsilon, backend=backend, **options)
    print()
    print(_format_row(f"sort ({tag})", otsort.sort(x, **kw)))
    print(_format_row(f"ranks ({tag})", otsort.ranks(x, **kw)))
    print(_format_row(f"quantiles ({tag})", otsort.quantile(x, [0.25, 0.5, 0.75], **kw)))
    print(_format_row(f"top-{k} ({tag})", otsort.topk(x, k, **kw)))
    print(_format_row(f"top-{k} mask ({tag})", otsort.topk_mask(x, k, **kw)))


def _read_image(path: pathlib.Path) -> tuple[np.ndarray, str]:
  """The image as floats in [0, 1], ``[H, W]`` or ``[H, W, 3]``, and the PIL mode to write it back in."""
  from PIL import Image, UnidentifiedImageError

  if not path.is_file():
    raise _UsageError(f"cannot read {str(path)!r}: no such file")
  try:
    with Image.open(path) as image:
      image.load()
      mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
      if image.mode in ("I", "I;16", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if pixels.max() > 255 else 255.0
        return np.clip(pixels / scale, 0, 1).astype(np.float32), mode
      return np.asarray(image.convert(mode), dtype=np.float32) / 255.0, mode
  except (UnidentifiedImageError, OSError, ValueError) as error:
    raise _UsageError(f"cannot read {str(path)!r} as an image: {error}") from None


def _write_atomically(path: pathlib.Path, write) -> None:
  """Calls ``write(temporary_path)``, then renames the result to ``path``: complete or absent."""
  descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(descriptor)
  try:
    write(temporary)
    os.replace(temporary, path)
  except BaseException:
    pathlib.Path(temporary).unlink(missing_ok=True)
    raise


def filter_image(args: argparse.Namespace) -> None:
  output = pathlib.Path(args.output)
  if output.suffix.lower() != ".png":
    raise _UsageError(f"OUT must be a .png file; got {str(output)!r}")
  if not output.parent.is_dir():
    raise _UsageError(f"cannot write {str(output)!r}: no such folder {str(output.parent)!r}")
  pixels, mode = _read_image(pathlib.Path(args.input))

  import otsort.filters
  from PIL import Image

  try:
    filtered = otsort.filters.quantile_filter(pixels, args.q, size=args.size, epsilon=args.epsilon,
                                              backend=args.backend)
  except ValueError as error:
    raise _UsageError(str(error)) from None
  result = Image.fromarray(np.round(np.clip(np.asarray(filtered), 0, 1) * 255).astype(np.uint8), mode=mode)
  _write_atomically(output, lambda temporary: result.save(temporary, format="PNG"))
  print(f"wrote {output} ({pixels.shape[1]}x{pixels.shape[0]}, q={args.q:g}, size={args.size}, "
        f"backend={args.backend}, epsilon={'default' if args.epsilon is None else f'{args.epsilon:g}'})")


def compare(args: argparse.Namespace) -> None:
  out = pathlib.Path(args.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise _UsageError(f"cannot create the output folder {str(out)!r}: {error}") from None
  from otsort import _compare

  rows = _compare.compare(methods=_compare.available_methods(), **_compare.settings(small=args.small))
  print(_compare.markdown_table(rows))
  for path in _compare.write_report(rows, out):
    print(f"wrote {path}")


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
  parser = argparse.ArgumentParser(prog="otsort", description="Differentiable sorting, ranking, quantiles and "
                                   "top-k for JAX.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  demo_parser = commands.add_parser("demo", help="soft operations of a small example on both backends",
                                    description="Print soft sort, ranks, quantiles, top-k and top-k mask of a "
                                    "small example, on both backends, beside the hard ones.")
  demo_parser.add_argument("--epsilon-pav", type=_positive_float, default=0.5, metavar="E",
                           help="epsilon of the pav backend (default: 0.5)")
  demo_parser.add_argument("--epsilon-sinkhorn", type=_positive_float, default=0.05, metavar="E",
                           help="epsilon of the sinkhorn backend (default: 0.05)")
  demo_parser.set_defaults(run=demo)

  filter_parser = commands.add_parser("filter", help="soft quantile (median) filter of an image file",
                                      description="Filter an image with a soft quantile filter (the soft median "
                                      "by default) and write the result as PNG.")
  filter_parser.add_argument("input", metavar="IN", help="input image (any format Pillow reads)")
  filter_parser.add_argument("output", metavar="OUT", help="output PNG file")
  filter_parser.add_argument("--q", type=_level, default=0.5, help="quantile level in [0, 1] (default: 0.5)")
  filter_parser.add_argument("--size", type=int, default=3, help="odd patch size (default: 3)")
  filter_parser.add_argument("--epsilon", type=_positive_float, default=None,
                             help="regularization strength (default: the backend's)")
  filter_parser.add_argument("--backend", choices=("pav", "sinkhorn"), default="pav",
                             help="soft sorting backend (default: pav)")
  filter_parser.set_defaults(run=filter_image)

  compare_parser = commands.add_parser("compare", help="compare L2, KL and entropic OT across epsilon",
                                       description="Compare the L2 and KL projections (pav) and entropic "
                                       "optimal transport (sinkhorn) across an epsilon sweep; write a table "
                                       "and plots.")
  compare_parser.add_argument("--out", default="otsort-compare", help="output folder (default: otsort-compare)")
  compare_parser.add_argument("--small", action="store_true", help="a quick, smaller sweep")
  compare_parser.set_defaults(run=compare)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except _UsageError as error:
    parser.exit(2, f"otsort {args.command}: error: {error}\n")
  except KeyboardInterrupt:
    parser.exit(130, f"otsort {args.command}: interrupted\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
