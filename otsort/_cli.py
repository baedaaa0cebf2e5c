"""The ``otsort`` command line: ``otsort demo`` shows the soft operations on a small example."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np


def _format_row(label: str, values: np.ndarray) -> str:
  return f"{label:<34}" + " ".join(f"{v:8.3f}" for v in np.asarray(values, dtype=float))


def demo(args: argparse.Namespace) -> int:
  import otsort  # imported here so that `otsort --help` stays fast

  x = np.array([2.0, -1.0, 0.5, 3.0, 0.7], dtype=np.float32)
  print(_format_row("x", x))
  print(_format_row("hard sort", np.sort(x)))
  print(_format_row("hard ranks", np.argsort(np.argsort(x, kind="stable"), kind="stable")))
  for regularization in ("l2", "kl"):
    for epsilon in args.epsilon:
      tag = f"pav {regularization} eps={epsilon:g}"
      print(_format_row(f"soft sort   ({tag})", otsort.sort(x, epsilon=epsilon, regularization=regularization)))
      print(_format_row(f"soft ranks  ({tag})", otsort.ranks(x, epsilon=epsilon, regularization=regularization)))
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="otsort", description="Differentiable sorting and ranking for JAX.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  demo_parser = commands.add_parser("demo", help="print soft sorts and ranks of a small example",
                                    description="Print soft sorts and ranks of a small example.")
  demo_parser.add_argument("--epsilon", type=float, nargs="+", default=[0.1, 3.0],
                           help="regularization strengths to show (default: 0.1 3.0)")
  demo_parser.set_defaults(run=demo)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  return args.run(args)


if __name__ == "__main__":
  sys.exit(main())
