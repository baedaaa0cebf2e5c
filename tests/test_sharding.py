"""Every op runs on a batch sharded over a device mesh without gathering it, and equals the unsharded result.

The mesh needs several devices, so each check runs in a subprocess with 4 host CPU devices
(``--xla_force_host_platform_device_count=4``), in both of JAX's sharding modes: automatic (XLA's partitioner
with the native kernels' partitioning rules) and explicit (the front end's ``shard_map``).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import otsort

    def check(backend, options, mode):
      kw = dict(backend=backend, **options)
      ops = {
          "sort": lambda x: otsort.sort(x, **kw),
          "ranks": lambda x: otsort.ranks(x, **kw),
          "quantile": lambda x: otsort.quantile(x, [0.25, 0.5], **kw),
          "topk": lambda x: otsort.topk(x, 3, **kw),
          "topk_mask": lambda x: otsort.topk_mask(x, 3, **kw),
      }

      def every_op_and_its_gradient(x):
        out = {}
        for name, op in ops.items():
          loss = lambda x, op=op: (lambda y: (y * jnp.linspace(-1.0, 1.0, y.shape[-1])).sum())(op(x))
          out[name] = op(x)
          out[name + " grad"] = jax.grad(loss)(x)
        return out

      mesh = jax.make_mesh((4,), ("batch",), axis_types=(getattr(AxisType, mode),))
      values = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float32)
      sharded = jax.device_put(values, NamedSharding(mesh, P("batch", None)))
      # One program for all ops (compiling is most of the cost): an all-gather anywhere in it fails the config.
      jitted = jax.jit(every_op_and_its_gradient)
      compiled = jitted.lower(sharded).compile()
      got, want = compiled(sharded), jitted(values)
      errors = {label: float(np.max(np.abs(np.asarray(got[label]) - np.asarray(want[label])))) for label in got}
      return {"all_gathers": compiled.as_text().count("all-gather"), "errors": errors}

    print(json.dumps(check(*json.loads(sys.argv[1]))))
""")


_CONFIGS = [
  (backend, options, mode)
  for backend, options in [("pav", {}), ("pav", {"regularization": "kl", "impl": "xla"}), ("sinkhorn", {})]
  for mode in ("Auto", "Explicit")
]


def _report(config) -> dict:
  # A subprocess per configuration, so that pytest-xdist spreads them over the workers.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _SCRIPT, json.dumps(config)],
    capture_output=True,
    text=True,
    env=env,
    cwd=_ROOT,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("config", _CONFIGS, ids=repr)
def test_sharded_batch_is_never_gathered_and_matches_unsharded(config):
  report = _report(config)
  assert report["all_gathers"] == 0, f"the program of every op and gradient gathers the input: {report}"
  # A sharded Sinkhorn solve stops when the rows of its own device converge, not all rows: results then differ
  # within the solver's threshold. PAV is exact.
  tolerance = 1e-3 if config[0] == "sinkhorn" else 1e-5
  for label, error in report["errors"].items():
    assert error <= tolerance, f"{label} differs from the unsharded result by {error}"
