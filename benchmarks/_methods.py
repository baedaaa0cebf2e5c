"""The methods compared: otsort's backends, the hard floor (jnp) and the anchors (ott-jax, jaxopt, torchsort).

Every method computes soft ``ranks`` and/or soft ``sort`` of float32 rows ``[batch, n]`` along the last axis,
0-based ranks, ascending. ``prepare`` binds a method to one input and returns a no-argument call that blocks
until its result is ready:

- mode ``"fwd"``: the call returns the output ``[batch, n]``;
- mode ``"fwd+bwd"``: the call returns ``d/dx sum(w * op(x))`` for a fixed random ``w`` (one VJP).

JAX methods run under ``jax.jit``; the torch methods (torchsort, ``torch.sort``) run eagerly on as many
threads as XLA's CPU client uses (:func:`xla_cpu_threads`), set with ``torch.set_num_threads``.

otsort is called only through its public API, with a Python float epsilon: ``otsort.ranks(x, epsilon=1.0,
regularization=..., impl=...)`` (pav) and ``otsort.ranks(x, epsilon=1e-2, backend="sinkhorn")``.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import os
import re

import numpy as np

OPS = ("ranks", "sort")
MODES = ("fwd", "fwd+bwd")

Call = Callable[[], object]

PAV_EPSILON = 1.0  # otsort pav's default, torchsort's and jaxopt's regularization_strength 1.0
SINKHORN_EPSILON = 1e-2  # otsort sinkhorn's default, and ott-jax's


def xla_cpu_threads() -> tuple[int, str]:
  """How many threads XLA's CPU client runs a computation on, and how that was found.

  XLA's CPU client runs its intra-op work (Eigen) on a pool of one thread per core it may use
  (``os.sched_getaffinity``); on Linux the pool's threads are named ``tf_XLAEigen`` and are counted after one
  jitted call. Elsewhere, or if none is found, the number of usable cores.
  """
  import jax
  import jax.numpy as jnp

  jax.jit(lambda x: jnp.sort(x) @ x.T)(jnp.ones((64, 64), jnp.float32)).block_until_ready()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  try:
    names = []
    for task in os.listdir("/proc/self/task"):
      with open(f"/proc/self/task/{task}/comm") as comm:
        names.append(comm.read().strip())
  except OSError:
    return cores, f"{cores} usable cores (no /proc/self/task to count XLA's threads)"
  pool = sum(name == "tf_XLAEigen" for name in names)
  if pool == 0:
    return cores, f"{cores} usable cores (no tf_XLAEigen thread found)"
  return pool, f"{pool} tf_XLAEigen threads counted after a jitted call ({cores} usable cores)"


def summarize(error: BaseException) -> str:
  """One line for a table: the innermost ``SomeError: message`` line of the text (a runtime error raised in
  a callback carries the original traceback in its message), else the first line."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  inner = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\w*: ", line)]
  if inner:
    return inner[-1][:200]
  return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"


class Method:
  """Base class. Subclasses set the class attributes and implement ``_row_fn`` or ``prepare``."""

  key: str = ""  # the name given to --methods
  ops: tuple[str, ...] = OPS
  epsilon: str = "-"
  complexity: str = "nlogn"  # "nlogn" or "n2": how the cost of a row grows, to predict slow cells
  regularization: str = "l2"  # which torchsort row its ratio column is to ("l2" or "kl")
  hard: bool = False  # a hard floor (no MAE: its ranks op is argsort, not ranks)
  note: str = ""  # what the report should say about how this method was run

  def label(self, op: str) -> str:
    raise NotImplementedError

  def unavailable(self) -> str | None:
    """None when the method can run here, else why not."""
    return None

  def skip(self, op: str, mode: str, batch: int, n: int) -> str | None:
    """None when the cell should run, else why it is left out."""
    return None

  def cost(self, batch: int, n: int) -> float:
    """Relative cost of a cell, to extrapolate a measured time to a larger cell."""
    return batch * (float(n) ** 2 if self.complexity == "n2" else n * np.log2(n + 1.0))

  def prepare(self, op: str, mode: str, x: np.ndarray, w: np.ndarray) -> Call:
    import jax
    import jax.numpy as jnp

    fn = self._row_fn(op)
    xd, wd = jnp.asarray(x), jnp.asarray(w)
    if mode == "fwd":
      compiled = jax.jit(fn)
      return lambda: compiled(xd).block_until_ready()
    compiled = jax.jit(jax.grad(lambda x, w: jnp.sum(w * fn(x))))
    return lambda: compiled(xd, wd).block_until_ready()

  def _row_fn(self, op: str) -> Callable:
    raise NotImplementedError


class OtsortPav(Method):
  def __init__(self, key: str, impl: str, regularization: str):
    self.key, self.impl, self.regularization = key, impl, regularization
    self.epsilon = f"{PAV_EPSILON:g}"

  def label(self, op):
    return f"otsort pav {self.impl} {self.regularization}"

  def unavailable(self):
    import jax.numpy as jnp

    import otsort

    try:
      otsort.ranks(jnp.ones((1, 3)), epsilon=PAV_EPSILON, impl=self.impl, regularization=self.regularization)
    except Exception as error:  # noqa: BLE001 - any failure means the row cannot run
      return summarize(error)
    return None

  def _row_fn(self, op):
    import otsort

    return functools.partial(
      getattr(otsort, op), epsilon=PAV_EPSILON, impl=self.impl, regularization=self.regularization
    )


class OtsortSinkhorn(Method):
  key = "sinkhorn"
  complexity = "n2"
  epsilon = f"{SINKHORN_EPSILON:g}"

  def label(self, op):
    return "otsort sinkhorn"

  def unavailable(self):
    import jax.numpy as jnp

    import otsort

    try:
      otsort.ranks(jnp.ones((1, 3)), epsilon=SINKHORN_EPSILON, backend="sinkhorn")
    except Exception as error:  # noqa: BLE001
      return f"otsort.ranks(x, backend='sinkhorn') does not work ({summarize(error)})"
    return None

  def skip(self, op, mode, batch, n):
    return "n > 1000 (O(n^2) transport)" if n > 1000 else None

  def _row_fn(self, op):
    import otsort

    return functools.partial(getattr(otsort, op), epsilon=SINKHORN_EPSILON, backend="sinkhorn")


class Jnp(Method):
  """The hard floor: ``jnp.argsort`` for ranks (integer output, no gradient), ``jnp.sort`` for sort."""

  key = "jnp"
  hard = True

  def label(self, op):
    return "jnp.argsort" if op == "ranks" else "jnp.sort"

  def skip(self, op, mode, batch, n):
    return "integer output, no gradient" if op == "ranks" and mode == "fwd+bwd" else None

  def _row_fn(self, op):
    import jax.numpy as jnp

    return functools.partial(jnp.argsort if op == "ranks" else jnp.sort, axis=-1)


class Ott(Method):
  """``ott.tools.soft_sort.ranks`` / ``sort`` with its defaults: epsilon 1e-2 on sigmoid-squashed inputs,
  n equispaced targets on [0, 1] (the same as otsort's sinkhorn defaults).

  Its gradient is first tried on one row of 100 (once per op): where that fails (ott-jax 0.6.0 in float32), the
  fwd+bwd cells are skipped with that failure, rather than each taking minutes to fail at larger n."""

  key = "ott"
  complexity = "n2"
  epsilon = f"{SINKHORN_EPSILON:g}"
  probe_n = 100

  def __init__(self):
    self._gradient_failure: dict[str, str | None] = {}

  def label(self, op):
    import ott

    return f"ott-jax {ott.__version__} soft_sort"

  def unavailable(self):
    try:
      import ott.tools.soft_sort  # noqa: F401
    except Exception as error:  # noqa: BLE001
      return summarize(error)
    return None

  def skip(self, op, mode, batch, n):
    if n > 1000:
      return "n > 1000 (O(n^2) transport)"
    if mode == "fwd+bwd" and (batch, n) != (1, self.probe_n):
      if op not in self._gradient_failure:
        self._gradient_failure[op] = self._probe_gradient(op)
      if self._gradient_failure[op] is not None:
        return f"fails at 1x{self.probe_n}: {self._gradient_failure[op]}"
    return None

  def _probe_gradient(self, op: str) -> str | None:
    x = np.random.default_rng(0).standard_normal((1, self.probe_n), dtype=np.float32)
    try:
      out = to_numpy(self.prepare(op, "fwd+bwd", x, x)())
    except Exception as error:  # noqa: BLE001
      return summarize(error)
    return None if np.all(np.isfinite(out)) else "gradient is not finite"

  def _row_fn(self, op):
    from ott.tools import soft_sort

    return functools.partial(getattr(soft_sort, op), axis=-1, epsilon=SINKHORN_EPSILON)


def _jaxopt_ranks_row(x, epsilon):
  """L2 soft ranks (0-based) from jaxopt's isotonic solver: the projection of x / epsilon onto the
  permutahedron of rho = (n, ..., 1), P(z, rho) = z - v[argsort^-1], v the decreasing isotonic regression of
  sort_desc(z) - rho (Blondel et al., 2020, Prop. 3)."""
  import jax.numpy as jnp
  from jaxopt.isotonic import isotonic_l2_pav

  n = x.shape[0]
  z = x / epsilon
  rho = jnp.arange(n, 0, -1, dtype=x.dtype)
  order = jnp.argsort(-z)
  z_sorted = z[order]
  v = isotonic_l2_pav(z_sorted - rho, increasing=False)
  return jnp.zeros_like(z).at[order].set(z_sorted - v) - 1


def _jaxopt_sort_row(x, epsilon):
  """L2 soft sort (ascending) from jaxopt's isotonic solver: minus the projection of rho / epsilon onto the
  permutahedron of -x, i.e. rho / epsilon - v with v the decreasing isotonic regression of
  rho / epsilon - sort_desc(-x)."""
  import jax.numpy as jnp
  from jaxopt.isotonic import isotonic_l2_pav

  n = x.shape[0]
  rho = jnp.arange(n, 0, -1, dtype=x.dtype) / epsilon
  w = -jnp.sort(x)  # sort_desc(-x)
  return -(rho - isotonic_l2_pav(rho - w, increasing=False))


class Jaxopt(Method):
  """jaxopt's isotonic regression (``jaxopt.isotonic.isotonic_l2_pav``, numba PAV in a ``pure_callback``,
  rows one after the other) inside the L2 soft rank / soft sort of Blondel et al. (argsort, PAV, unsort in
  JAX), vmapped over rows, at otsort pav's default epsilon. Its JVP builds an n x n matrix per row."""

  key = "jaxopt"
  epsilon = "1"
  max_grad_elements = 6.6e7  # batch * n^2 of jaxopt's dense JVP (float32: ~264 MB per temporary)

  def label(self, op):
    return "jaxopt isotonic l2 (numba)"

  def unavailable(self):
    try:
      import jax.numpy as jnp
      from jaxopt._src import isotonic
      import numba  # noqa: F401
    except Exception as error:  # noqa: BLE001
      return summarize(error)
    try:
      isotonic.isotonic_l2_pav(jnp.arange(3.0)).block_until_ready()
      return None
    except Exception as error:  # noqa: BLE001
      failure = summarize(error)
      detail = re.search(r"Unknown attribute .*? of type readonly buffer[^\n]*", str(error))
      failure += f": {detail.group(0)}" if detail else ""
    # jaxopt 0.8.5 on jax >= 0.7: pure_callback hands the numba kernel a read-only buffer, which numba cannot
    # type. The only change: the kernel receives np.asarray of it. jaxopt's custom_jvp and JVP are untouched.
    kernel = isotonic._isotonic_l2_pav_numba
    if not getattr(kernel, "_otsort_bench_wrapped", False):
      wrapped = lambda y: kernel(np.asarray(y))
      wrapped._otsort_bench_wrapped = True
      isotonic._isotonic_l2_pav_numba = wrapped
    try:
      isotonic.isotonic_l2_pav(jnp.arange(3.0)).block_until_ready()
    except Exception as error:  # noqa: BLE001
      return f"{failure}; still failing with the callback argument wrapped in np.asarray: {summarize(error)}"
    self.note = (
      f"jaxopt.isotonic.isotonic_l2_pav fails as installed ({failure}); timed with its numba kernel "
      "called on np.asarray(y) inside jaxopt's own pure_callback and custom_jvp, nothing else changed."
    )
    return None

  def skip(self, op, mode, batch, n):
    if mode == "fwd+bwd" and batch * float(n) ** 2 > self.max_grad_elements:
      return f"jaxopt's JVP is dense: batch*n^2 = {batch * float(n) ** 2:.1e} floats per temporary"
    return None

  def _row_fn(self, op):
    import jax

    row = _jaxopt_ranks_row if op == "ranks" else _jaxopt_sort_row
    return jax.vmap(functools.partial(row, epsilon=PAV_EPSILON))


def _torch_threads(threads: int) -> str | None:
  """Imports torch and sets its intra-op threads; None, or why torch cannot run here."""
  try:
    import torch
  except Exception as error:  # noqa: BLE001
    return summarize(error)
  torch.set_num_threads(threads)
  return None


class _TorchMethod(Method):
  """Eager torch on CPU, ``threads`` intra-op threads (the harness sets it to XLA's thread count)."""

  threads = 1

  def _fn(self, op: str) -> Callable:
    raise NotImplementedError

  def prepare(self, op, mode, x, w):
    import torch

    torch.set_num_threads(self.threads)
    fn = self._fn(op)
    xt, wt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w))
    if mode == "fwd":

      def forward():
        with torch.no_grad():
          return fn(xt)

      return forward
    xr = xt.clone().requires_grad_(True)

    def forward_backward():
      xr.grad = None
      (wt * fn(xr)).sum().backward()
      return xr.grad

    return forward_backward


class Torchsort(_TorchMethod):
  """torchsort's CPU ``soft_rank`` / ``soft_sort`` (``regularization`` "l2" or "kl", regularization_strength
  1.0 = otsort pav's default epsilon), eager; ranks shifted to 0-based."""

  epsilon = f"{PAV_EPSILON:g}"

  def __init__(self, regularization: str = "l2"):
    self.regularization = regularization
    self.key = "torchsort" if regularization == "l2" else f"torchsort-{regularization}"

  def label(self, op):
    from importlib import metadata

    name = "soft_rank" if op == "ranks" else "soft_sort"
    return f"torchsort {metadata.version('torchsort')} {name} {self.regularization}"

  def unavailable(self):
    reason = _torch_threads(self.threads)
    if reason is not None:
      return reason
    try:
      import torch
      import torchsort

      torchsort.soft_rank(torch.ones((1, 3)))
    except Exception as error:  # noqa: BLE001
      return summarize(error)
    return None

  def _fn(self, op):
    import torchsort

    options = {"regularization": self.regularization, "regularization_strength": PAV_EPSILON}
    if op == "ranks":
      return lambda t: torchsort.soft_rank(t, **options) - 1
    return lambda t: torchsort.soft_sort(t, **options)


class Torch(_TorchMethod):
  """PyTorch's hard floor, eager on CPU: ``torch.argsort`` for ranks (integer output, no gradient) and
  ``torch.sort`` (values and indices; the gradient of the values) for sort."""

  key = "torch"
  hard = True

  def label(self, op):
    import torch

    return f"torch {torch.__version__.split('+')[0]} {'argsort' if op == 'ranks' else 'sort'}"

  def unavailable(self):
    return _torch_threads(self.threads)

  def skip(self, op, mode, batch, n):
    return "integer output, no gradient" if op == "ranks" and mode == "fwd+bwd" else None

  def _fn(self, op):
    import torch

    if op == "ranks":
      return lambda t: torch.argsort(t, dim=-1)
    return lambda t: torch.sort(t, dim=-1).values


def all_methods() -> list[Method]:
  return [
    OtsortPav("pav-native-l2", "native", "l2"),
    OtsortPav("pav-native-kl", "native", "kl"),
    OtsortPav("pav-xla", "xla", "l2"),
    OtsortSinkhorn(),
    Jnp(),
    Ott(),
    Jaxopt(),
    Torchsort("l2"),
    Torchsort("kl"),
    Torch(),
  ]


def to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().numpy()
  return np.asarray(value)
