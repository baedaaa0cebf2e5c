r"""Readouts: soft sort, ranks and friends from one row's transport plan.

With the coupling :math:`P \in \mathbb{R}_+^{n \times m}` from inputs
:math:`x` to targets :math:`y`, row sums :math:`r` and column sums :math:`c`:

.. math::

  \text{sort}(x)_j = \frac{(P^\top x)_j}{c_j}, \qquad
  \text{ranks}(x)_i = (n - 1)\,\frac{(P t)_i}{r_i},
  \quad t_j = \frac{y_j - y_1}{y_m - y_1}.

We divide by the plan's *exact* marginals, where ott-jax divides by the
prescribed ones (:math:`b` and :math:`1/n`). The two agree within the solver
threshold, but ours are exact convex combinations whatever the solver
stopped at: soft sorted values stay in :math:`[\min x, \max x]`, ranks in
:math:`[0, n - 1]`, mask values in :math:`[0, 1]`.

Every function here sees one row: ``readout(transport, x, ...)`` with the row's plan and its values ``x [n]``
(and static or per-row extras); the backend maps them over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from otsort.sinkhorn._transport import Transport


def column_means(tr: Transport, values: jax.Array) -> jax.Array:
  """Per-target averages of ``values`` (``[n]`` or ``[n, d]``) -> ``[m(, d)]``."""
  weighted = tr.plan.T @ values
  col = tr.col_sums if values.ndim == 1 else tr.col_sums[:, None]
  return weighted / col


def row_means(tr: Transport, values: jax.Array) -> jax.Array:
  """Per-input averages of target ``values`` ``[m]`` -> ``[n]``."""
  return (tr.plan @ values) / tr.row_sums


def normalised_positions(locations: tuple[float, ...], dtype) -> jax.Array:
  """Target locations mapped affinely onto ``[0, 1]`` (``[m]``)."""
  y = np.asarray(locations, dtype=np.float64)
  return jnp.asarray((y - y[0]) / (y[-1] - y[0]), dtype=dtype)


def sort(tr: Transport, x: jax.Array) -> jax.Array:
  """Soft sorted values, one per target, ascending: ``[m]``."""
  return column_means(tr, x)


def sort_at(tr: Transport, x: jax.Array, *, index: tuple[int, ...]) -> jax.Array:
  """The soft sorted values of the targets ``index`` (quantile and top-k targets): ``[len(index)]``."""
  return column_means(tr, x)[np.asarray(index)]


def ranks(tr: Transport, x: jax.Array, *, locations: tuple[float, ...]) -> jax.Array:
  """Soft ranks in ``[0, n - 1]``, ascending (smallest gets 0): ``[n]``."""
  del x  # ranks are read off the plan alone
  n = tr.plan.shape[0]
  t = normalised_positions(locations, tr.plan.dtype)
  return (n - 1) * row_means(tr, t)


def upper_share(tr: Transport, x: jax.Array) -> jax.Array:
  """The share of each input's mass sent to the last target (the top-k mask of a two-target plan): ``[n]``."""
  del x
  return tr.plan[:, -1] / tr.row_sums


def quantize(tr: Transport, x: jax.Array) -> jax.Array:
  """Each input replaced by the soft average of its soft levels: ``[n]``."""
  return row_means(tr, column_means(tr, x))


def sort_values(tr: Transport, x: jax.Array, values: jax.Array, *, start: int) -> jax.Array:
  """Per-target averages of the vectors ``values [n, d]`` for the targets from ``start`` on: ``[m - start, d]``."""
  del x
  return column_means(tr, values)[start:]


def normalize(tr: Transport, x: jax.Array, targets: jax.Array) -> jax.Array:
  """Each input replaced by the average target value ``targets [m]`` it is sent to: ``[n]``."""
  del x
  return row_means(tr, targets)
