"""otsort: differentiable sorting, ranking, quantiles and top-k for JAX.

Two interchangeable backends behind one API: ``pav`` (projections onto the permutahedron, Blondel et al.,
ICML 2020) and ``sinkhorn`` (entropic optimal transport, Cuturi et al., NeurIPS 2019). Every operation works
along ``axis`` (the last by default) of an array of any shape.
"""

from otsort import filters
from otsort import losses
from otsort._api import quantile
from otsort._api import quantile_normalization
from otsort._api import quantize
from otsort._api import ranks
from otsort._api import sort
from otsort._api import sort_with
from otsort._api import topk
from otsort._api import topk_mask
from otsort.sinkhorn import TargetMeasure

__version__ = "0.1.0"

__all__ = [
    "TargetMeasure",
    "filters",
    "losses",
    "quantile",
    "quantile_normalization",
    "quantize",
    "ranks",
    "sort",
    "sort_with",
    "topk",
    "topk_mask",
]
