"""otsort: differentiable sorting, ranking, quantiles and top-k for JAX.

Two interchangeable backends behind one API: ``pav`` (projections onto the permutahedron, Blondel et al.,
ICML 2020) and ``sinkhorn`` (entropic optimal transport, Cuturi et al., NeurIPS 2019). Every operation works
along ``axis`` (the last by default) of an array of any shape.
"""

from otsort._api import quantile
from otsort._api import ranks
from otsort._api import sort
from otsort._api import topk
from otsort._api import topk_mask

__version__ = "0.1.0"

__all__ = ["quantile", "ranks", "sort", "topk", "topk_mask"]
