"""The ``pav`` backend: permutahedron projections solved by isotonic regression (Pool Adjacent Violators)."""
