"""The ``pav`` backend: permutahedron projections solved by isotonic regression (Pool Adjacent Violators).

The public object is :class:`otsort.Pav`; the modules here are private.
"""

from otsort.pav._backend import Pav

__all__ = ["Pav"]
