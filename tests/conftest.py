"""Shared fixtures: float64 on demand, without leaking it to other tests.

float64: ``jax.enable_x64`` is a context manager in jax >= 0.8 (``jax.experimental.enable_x64`` is gone). The
``x64`` fixture enters it for one test; ``_x64_is_restored`` checks after every test that the global flag is
back where it was, so a test that flips it by hand fails loudly instead of changing other files' dtypes.
"""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test with 64-bit types enabled (jnp.asarray(1.0).dtype is float64)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(autouse=True)
def _x64_is_restored():
  before = jax.config.jax_enable_x64
  yield
  assert jax.config.jax_enable_x64 == before, "a test changed jax_enable_x64 and did not restore it"
