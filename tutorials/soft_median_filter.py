# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A soft median filter against salt-and-pepper noise
#
# **Question.** The median filter is the classic cure for salt-and-pepper noise, but its output is piecewise
# constant in the input pixels: its gradient picks one pixel per window, so it is a poor layer to train
# through. `otsort.filters.median_filter` replaces the hard median of each window by a soft one. How much
# denoising quality does the soft median give up for its gradients, as a function of `epsilon`?
#
# **Setup.** The `camera` photograph shipped inside scikit-image (no download), in [0, 1]; 10% of the pixels
# replaced by 0 or 1 (salt and pepper); 3 x 3 windows, `mode="reflect"`. We compare, by PSNR against the clean
# image: the noisy image, scipy's hard median, the soft median (`pav` and `sinkhorn`, each at two epsilons)
# and a 3 x 3 mean filter.
#
# Run as a script: `python tutorials/soft_median_filter.py [--small] [--out DIR]` (`--small`: a 128 x 128
# version of the image, under 30 s on two cores). It prints one `PSNR <method>: <value> dB` line per method and
# saves `soft_median_filter.png` in `DIR` (default `tutorials/out/`).

# %%
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:
  matplotlib.use("Agg")  # a script writes files; a notebook shows the figure inline
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import scipy.ndimage
import skimage.data

from otsort import filters

if "__file__" in globals():  # a script: next to it
  _default_out = pathlib.Path(__file__).resolve().parent / "out"
else:  # a notebook, started in the repository root or in tutorials/
  _default_out = pathlib.Path("out" if pathlib.Path.cwd().name == "tutorials" else "tutorials/out")
parser = argparse.ArgumentParser(description="Soft median filter against salt-and-pepper noise.")
parser.add_argument("--small", action="store_true", help="a 128 x 128 image: runs in under 30 s")
parser.add_argument("--out", type=pathlib.Path, default=_default_out, help="where figures go (default: %(default)s)")
args, _ = parser.parse_known_args()  # a notebook kernel passes its own flags: ignore them
args.out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()

# %% [markdown]
# ## The data
#
# `skimage.data.camera()` reads `camera.png` from the installed wheel. The small version keeps every fourth
# pixel, so it shows the whole scene.

# %%
clean = skimage.data.camera().astype(np.float32) / 255.0
if args.small:
  clean = clean[::4, ::4]
rng = np.random.default_rng(0)
noisy = clean.copy()
u = rng.random(clean.shape)
noisy[u < 0.05] = 0.0  # pepper
noisy[u > 0.95] = 1.0  # salt


def psnr(image: np.ndarray) -> float:
  """Peak signal-to-noise ratio against the clean image, in dB (peak value 1)."""
  mse = np.mean((np.asarray(image, dtype=np.float64) - clean) ** 2)
  return float(10.0 * np.log10(1.0 / mse))


print(f"image: {clean.shape[0]} x {clean.shape[1]}, {np.mean((u < 0.05) | (u > 0.95)):.1%} of pixels corrupted")

# %% [markdown]
# ## The filters
#
# The soft filters are compiled once per configuration (`size` and `backend` are static; `epsilon` is an ordinary
# argument, so trying several values compiles nothing new).
#
# Scale of `epsilon` for `pav`: a window is sorted exactly when none of its consecutive sorted values are more
# than `1 / epsilon` apart. Pixels are in [0, 1], so any `epsilon <= 1` gives back the hard median, and the
# softness starts above 1; as `epsilon` grows the soft median slides towards the window mean. `sinkhorn`
# standardises each window, so its `epsilon` is on another scale (default 1e-2).


# %%
_median_filter = jax.jit(filters.median_filter, static_argnames=("size", "backend"))


def soft_median(image: np.ndarray, epsilon: float, backend: str) -> np.ndarray:
  return np.asarray(_median_filter(jnp.asarray(image), size=3, epsilon=epsilon, backend=backend))


PAV_EPSILONS = (3.0, 30.0)
SINKHORN_EPSILONS = (1e-2, 1e-1)

results = {"noisy": noisy, "hard median (scipy)": scipy.ndimage.median_filter(noisy, size=3, mode="reflect")}
for epsilon in PAV_EPSILONS:
  results[f"soft median pav eps={epsilon:g}"] = soft_median(noisy, epsilon, "pav")
for epsilon in SINKHORN_EPSILONS:
  results[f"soft median sinkhorn eps={epsilon:g}"] = soft_median(noisy, epsilon, "sinkhorn")
results["mean filter"] = scipy.ndimage.uniform_filter(noisy, size=3, mode="reflect")

for name, image in results.items():
  print(f"PSNR {name}: {psnr(image):.2f} dB")

# %% [markdown]
# ## From the hard median to the mean, as `epsilon` grows
#
# The `pav` soft median on a grid of epsilons (one compilation each). At small `epsilon` it is the hard median;
# at large `epsilon` the mean filter; in between the PSNR stays at the hard median's until `epsilon` is a few
# units, and then falls to the mean filter's.

# %%
sweep = np.geomspace(0.5, 1000.0, 8 if args.small else 15)
sweep_psnr = np.array([psnr(soft_median(noisy, float(e), "pav")) for e in sweep])
best = int(np.argmax(sweep_psnr))
print(f"PSNR best soft median pav: {sweep_psnr[best]:.2f} dB at eps={sweep[best]:.3g}")

# %% [markdown]
# ## The figure

# %%
panels = [("clean", clean)] + list(results.items())
rows = 2
columns = -(-(len(panels) + 1) // rows)  # the images, then the PSNR curve
fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows))
axes = axes.ravel()
for ax, (name, image) in zip(axes, panels):
  ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_title(name if name == "clean" else f"{name}\nPSNR {psnr(image):.2f} dB", fontsize=9)
  ax.axis("off")
curve = axes[len(panels)]
curve.semilogx(sweep, sweep_psnr, "o-", color="C0", label="soft median (pav)")
for name, style in (("hard median (scipy)", "--"), ("mean filter", ":"), ("noisy", "-.")):
  curve.axhline(psnr(results[name]), color="k", linestyle=style, linewidth=1, label=name)
curve.set_xlabel("epsilon (pav)")
curve.set_ylabel("PSNR (dB)")
curve.set_title("PSNR against epsilon", fontsize=9)
curve.legend(fontsize=7)
for ax in axes[len(panels) + 1 :]:
  ax.axis("off")
fig.suptitle(f"3 x 3 median filters on 10% salt-and-pepper noise ({clean.shape[0]} x {clean.shape[1]})")
fig.tight_layout()
path = args.out / "soft_median_filter.png"
fig.savefig(path, dpi=90)
print(f"figure: {path}")
print(f"elapsed: {time.perf_counter() - start:.1f} s")

# %% [markdown]
# **Answer.** The printed PSNRs answer it. With `pav` at `epsilon = 3` the soft median is within about 0.1 dB
# of the hard median (512 x 512: 29.40 dB against 29.50 dB; on the `--small` image it is even 0.04 dB above),
# while it has a gradient with respect to every pixel of its window. Past `epsilon` of about 10 the PSNR
# falls, and by `epsilon = 30` the soft median is a mean filter (22.6 dB against the mean filter's 22.4 dB).
# `sinkhorn` tells the same story on its own scale of `epsilon`: 29.47 dB at its default 1e-2 and 29.72 dB at
# 1e-1, slightly above the hard median, its mild smoothing helping on this image.
