"""otsort: differentiable sorting, ranking, quantiles and top-k for JAX.

Two interchangeable backends behind one API: ``pav`` (projections onto the permutahedron, Blondel et al.,
ICML 2020) and ``sinkhorn`` (entropic optimal transport, Cuturi et al., NeurIPS 2019). Every operation works
along ``axis`` (the last by default) of an array of any shape.

The whole API:

- operations: :func:`sort`, :func:`ranks`, :func:`quantile`, :func:`topk`, :func:`topk_mask`, and on the sinkhorn
  backend only :func:`quantize`, :func:`sort_with`, :func:`quantile_normalization`;
- backends: ``backend="pav"`` (default) or ``"sinkhorn"`` with their options as keywords, or a configured object,
  :class:`Pav` or :class:`Sinkhorn` (each with ``default_epsilon``); :class:`TargetMeasure`, a custom target
  measure for the sinkhorn ``sort``, ``ranks`` and ``sort_with``;
- :mod:`otsort.losses` (Spearman correlation and boosting objectives, soft classification errors) and
  :mod:`otsort.filters` (soft quantile and median filters for images), :mod:`otsort.rax` (soft ``rank_fn`` and
  ``cutoff_fn`` for rax's ranking metrics).

Example:
  >>> import otsort
  >>> otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1)
  Array([2., 0., 1.], dtype=float32)
  >>> otsort.sort([3.0, 1.0, 2.0], epsilon=1e-3, backend=otsort.Sinkhorn()).round(2)
  Array([1., 2., 3.], dtype=float32)

The names below are imported on first use (PEP 562), so that ``import otsort`` does not load JAX until an
operation is asked for: the command line can then answer Ctrl-C during start-up with one line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports the same names lazily
  from otsort import filters
  from otsort import losses
  from otsort import rax
  from otsort._api import quantile
  from otsort._api import quantile_normalization
  from otsort._api import quantize
  from otsort._api import ranks
  from otsort._api import sort
  from otsort._api import sort_with
  from otsort._api import topk
  from otsort._api import topk_mask
  from otsort.pav import Pav
  from otsort.sinkhorn import Sinkhorn
  from otsort.sinkhorn import TargetMeasure

try:
  __version__ = importlib.metadata.version("otsort")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

# public name -> the module that defines it (None: a submodule of that name)
_WHERE = {
  "Pav": "otsort.pav",
  "Sinkhorn": "otsort.sinkhorn",
  "TargetMeasure": "otsort.sinkhorn",
  "filters": None,
  "losses": None,
  "quantile": "otsort._api",
  "quantile_normalization": "otsort._api",
  "quantize": "otsort._api",
  "rax": None,
  "ranks": "otsort._api",
  "sort": "otsort._api",
  "sort_with": "otsort._api",
  "topk": "otsort._api",
  "topk_mask": "otsort._api",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
  if name not in _WHERE:
    raise AttributeError(f"module 'otsort' has no attribute {name!r}")
  module = _WHERE[name]
  value = (
    importlib.import_module(f"otsort.{name}") if module is None else getattr(importlib.import_module(module), name)
  )
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
