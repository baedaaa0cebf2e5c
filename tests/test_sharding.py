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
      mesh = jax.make_mesh((4,), ("batch",), axis_types=(getattr(AxisType, mode),))
      values = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float32)
      sharded = jax.device_put(values, NamedSharding(mesh, P("batch", None)))
      report = {}
      for name, op in ops.items():
        def loss(x, op=op):
          y = op(x)
          return (y * jnp.linspace(-1.0, 1.0, y.shape[-1])).sum()

        for label, fn in ((name, op), (name + " grad", jax.grad(loss))):
          jitted = jax.jit(fn)
          compiled = jitted.lower(sharded).compile()
          error = float(np.max(np.abs(np.asarray(compiled(sharded)) - np.asarray(jitted(values)))))
          report[label] = {"all_gathers": compiled.as_text().count("all-gather"), "error": error}
      return report

    configs = json.loads(sys.argv[1])
    print(json.dumps([check(*config) for config in configs]))
""")


_CONFIGS = [
  (backend, options, mode)
  for backend, options in [("pav", {}), ("pav", {"regularization": "kl", "impl": "xla"}), ("sinkhorn", {})]
  for mode in ("Auto", "Explicit")
]


@pytest.fixture(scope="module")
def reports() -> dict:
  # One subprocess for every configuration: JAX starts once.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", _SCRIPT, json.dumps(_CONFIGS)],
    capture_output=True,
    text=True,
    env=env,
    cwd=_ROOT,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(zip(map(repr, _CONFIGS), json.loads(result.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("config", _CONFIGS, ids=repr)
def test_sharded_batch_is_never_gathered_and_matches_unsharded(reports, config):
  # A sharded Sinkhorn solve stops when the rows of its own device converge, not all rows: results then differ
  # within the solver's threshold. PAV is exact.
  tolerance = 1e-3 if config[0] == "sinkhorn" else 1e-5
  for label, entry in reports[repr(config)].items():
    assert entry["all_gathers"] == 0, f"{label} gathers the input: {entry}"
    assert entry["error"] <= tolerance, f"{label} differs from the unsharded result: {entry}"
