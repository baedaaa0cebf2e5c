"""Sinkhorn backend: soft sorting by entropic optimal transport (ott-jax).

Row API used by the otsort front end; see ``_backend.py`` for the operators
and ``_targets.py`` for target measures.
"""

from otsort.sinkhorn._backend import DEFAULT_EPSILON
from otsort.sinkhorn._backend import parse_options
from otsort.sinkhorn._backend import quantile
from otsort.sinkhorn._backend import quantile_normalization
from otsort.sinkhorn._backend import quantize
from otsort.sinkhorn._backend import ranks
from otsort.sinkhorn._backend import SinkhornOptions
from otsort.sinkhorn._backend import sort
from otsort.sinkhorn._backend import sort_with
from otsort.sinkhorn._backend import topk
from otsort.sinkhorn._backend import topk_mask
from otsort.sinkhorn._targets import TargetMeasure

__all__ = [
    "DEFAULT_EPSILON",
    "SinkhornOptions",
    "TargetMeasure",
    "parse_options",
    "quantile",
    "quantile_normalization",
    "quantize",
    "ranks",
    "sort",
    "sort_with",
    "topk",
    "topk_mask",
]
