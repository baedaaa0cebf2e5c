"""Which otsort is timed, and where it came from.

By default the harness times the otsort that ``import otsort`` finds (the editable install of the checkout).
``--otsort DIR`` times another copy instead, for before/after figures: DIR holds an ``otsort`` package with its
compiled kernels, e.g. an earlier commit built with

    git archive COMMIT | tar -x -C /tmp/src && pip install --no-deps --target DIR /tmp/src

:func:`use` puts a finder first on ``sys.meta_path`` that loads ``otsort`` and its submodules from DIR only (an
editable install's own finder would otherwise win over ``sys.path``), and records DIR in the environment so the
memory subprocesses load the same copy.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import pathlib
import subprocess
import sys

ENV = "OTSORT_BENCH_PATH"


class _Finder(importlib.abc.MetaPathFinder):
  """Finds ``otsort`` in ``root`` and its submodules in their parents' ``__path__`` (so inside ``root``)."""

  def __init__(self, root: str):
    self.root = root

  def find_spec(self, name, path=None, target=None):
    if name != "otsort" and not name.startswith("otsort."):
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, [self.root] if name == "otsort" else path)
    if spec is None:  # not in the copy: do not fall back to another otsort
      raise ModuleNotFoundError(f"No module named {name!r} in the otsort at {self.root}", name=name)
    return spec


def use(root: str | os.PathLike) -> None:
  """Makes ``import otsort`` load the copy in ``root`` (a folder holding the ``otsort`` package)."""
  root = str(pathlib.Path(root).resolve())
  if not (pathlib.Path(root) / "otsort" / "__init__.py").is_file():
    raise SystemExit(f"--otsort {root}: no otsort/__init__.py there; give the folder that holds the package")
  if "otsort" in sys.modules:
    raise RuntimeError("otsort was imported before benchmarks._provenance.use(); call it first")
  sys.meta_path.insert(0, _Finder(root))
  os.environ[ENV] = root


def use_from_environment() -> None:
  """In a subprocess: the copy the parent chose, if any."""
  if os.environ.get(ENV) and not any(isinstance(f, _Finder) for f in sys.meta_path):
    use(os.environ[ENV])


def _git(folder: pathlib.Path, *args: str) -> str | None:
  try:
    done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def describe(label: str | None = None) -> dict:
  """Where the imported otsort lives and, in a git checkout, its commit and the files changed under otsort/."""
  import otsort

  package = pathlib.Path(otsort.__file__).resolve().parent
  info = {"path": str(package), "label": label, "commit": None, "uncommitted": None}
  commit = _git(package, "rev-parse", "HEAD")
  if commit is not None:
    info["commit"] = commit
    status = _git(package, "status", "--porcelain", "--", ".")
    info["uncommitted"] = [line[3:] for line in status.splitlines()] if status else []
  return info


def summary(info: dict) -> str:
  text = f"otsort from {info['path']}"
  if info.get("label"):
    text += f" ({info['label']})"
  if info["commit"] is None:
    return text + "; not a git checkout"
  text += f"; commit {info['commit'][:12]}"
  changed = info["uncommitted"] or []
  return text + (f" plus uncommitted changes in {len(changed)} files under otsort/" if changed else ", clean")
