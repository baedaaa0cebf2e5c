# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # L2, KL or optimal transport: what does epsilon buy?
#
# **Question.** Every soft operation trades closeness to the hard one against gradients. For the three
# regularizations otsort offers (the L2 and KL projections onto the permutahedron, `backend="pav"`, and entropic
# optimal transport, `backend="sinkhorn"`), how fast does the error to the hard sort and ranks vanish as epsilon
# shrinks, how many inputs still receive a gradient, and what does one call cost?
#
# **Code.** `otsort._compare.compare` runs the sweep on random normal rows (the same rows for every method) and
# `write_report` writes a markdown table, CSV, JSON and three plots into `--out` (default `tutorials/out/`).
# The same runs from the command line as `otsort compare`.
#
# **Answer** (full mode; the numbers are printed at the end):
#
# - Error: all methods approach the hard operations as epsilon decreases; at the same epsilon the KL projection is
#   closer to the hard ranks than the L2 one.
# - Gradient sparsity: the gradient of a loss of the soft ranks reaches only the inputs that isotonic regression
#   pools with a neighbour, for L2 *and* KL alike (both Jacobians are block-diagonal in sorted order): at small
#   epsilon most inputs get exactly zero, at large epsilon all do. Entropic OT couples every input with every
#   target, so its gradient is dense at every epsilon.
# - Time: the projections cost O(n log n) per row and do not depend on epsilon; Sinkhorn costs O(n^2) per
#   iteration and needs more iterations as epsilon shrinks.
#
# Run it as a script (`python tutorials/comparing_regularizations.py [--small] [--out DIR]`) or open it as a
# notebook with jupytext. `--small` sweeps 5 epsilons on 8 rows of 32 values (< 30 s).

# %%
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from otsort import _compare

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--small", action="store_true", help="5 epsilons, 8 rows of 32 values (< 30 s)")
parser.add_argument("--out", default=str(Path("tutorials") / "out"), help="output folder (default tutorials/out)")
args, _ = parser.parse_known_args()  # known args only: a notebook kernel passes its own

settings = _compare.settings(small=args.small)
methods = _compare.available_methods()
print(f"methods: {', '.join(methods)}; n = {settings['n']}, batch = {settings['batch']}")

# %% [markdown]
# ## The sweep
#
# `epsilon` is an ordinary argument of every otsort operation, so one jitted function serves the whole sweep:
# `jax.jit(lambda x, e: otsort.ranks(x, epsilon=e))` compiles once, whatever values `e` takes (and `jax.vmap` over
# `e` evaluates several epsilons in one call). `compare` builds its timed functions that way, once per method.

# %%
rows = _compare.compare(methods=methods, seed=0, **settings)
print(_compare.markdown_table(rows))

# %% [markdown]
# ## Table and figures
#
# `comparison_error.png`: mean absolute error to `jnp.sort` and to the hard ranks against epsilon.
# `comparison_grad_density.png`: the fraction of inputs with a non-zero gradient of `sum(w * ranks(x))`.
# `comparison_time.png`: the median time of one jitted call.

# %%
paths = _compare.write_report(rows, args.out)
for path in paths:
  print(f"wrote {path}")

# %% [markdown]
# ## The numbers that answer the question

# %%
moderate = min({row["epsilon"] for row in rows}, key=lambda e: abs(np.log10(e) - np.log10(0.1)))
for method in methods:
  mine = [row for row in rows if row["method"] == method]
  smallest, at_moderate = mine[0], next(row for row in mine if row["epsilon"] == moderate)
  print(f"ranks error [{method}] at epsilon {smallest['epsilon']:.3g}: {smallest['ranks_error']:.4g}; "
        f"at epsilon {mine[-1]['epsilon']:.3g}: {mine[-1]['ranks_error']:.4g}")
  print(f"gradient density [{method}] at epsilon {moderate:.3g}: {at_moderate['ranks_grad_density']:.3f}")
  print(f"time per call [{method}] at epsilon {moderate:.3g}: {at_moderate['ranks_grad_ms']:.3g} ms "
        "(ranks, value and gradient)")
