"""The ``sinkhorn`` backend: soft sorting by entropic optimal transport (ott-jax).

Users need two names, both also in :mod:`otsort`: :class:`Sinkhorn`, the configured backend
(``backend=otsort.Sinkhorn(...)``), and :class:`TargetMeasure`, a custom target measure for ``sort``, ``ranks``
and ``sort_with``. The pieces are private: target measures (``_targets``), the transport (``_transport``), the
readouts (``_readouts``) and the backend object that pairs them (``_backend``).
"""

from otsort.sinkhorn._backend import Sinkhorn
from otsort.sinkhorn._targets import TargetMeasure

__all__ = ["Sinkhorn", "TargetMeasure"]
