"""The native algorithm core, built alone with AddressSanitizer and UndefinedBehaviorSanitizer, passes its checks.

``tests/csrc/core_test.cc`` includes ``pav_core.h`` and ``cpu_sort.h`` (the code both XLA handlers run) without XLA
and checks the sort against ``std::stable_sort`` and PAV against a long-double reference. Here it is compiled with
``-fsanitize=address,undefined -fno-sanitize-recover=all``, so an out-of-bounds access, a signed overflow or any
other undefined behaviour fails the test as surely as a wrong number.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_CSRC = _ROOT / "otsort" / "pav" / "csrc"
_DRIVER = pathlib.Path(__file__).resolve().parent / "csrc" / "core_test.cc"
_FLAGS = ["-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# Leak checking needs ptrace, which some containers forbid; the driver owns no memory outside std containers.
_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_ENV, check=False)


@pytest.fixture(scope="module")
def sanitizing_compiler(tmp_path_factory) -> str:
  """A C++ compiler that builds and runs a trivial sanitized program; skips the module when there is none."""
  compiler = _compiler()
  if compiler is None:
    pytest.skip("no C++ compiler (g++ or $CXX) on PATH to build the sanitized core test")
  folder = tmp_path_factory.mktemp("sanitizer_probe")
  source = folder / "probe.cc"
  source.write_text("#include <vector>\nint main() { std::vector<int> v(3, 1); return v[0] - 1; }\n")
  build = _run([compiler, *_FLAGS, str(source), "-o", str(folder / "probe")], timeout=120)
  if build.returncode != 0:
    pytest.skip(
      f"{compiler} cannot build with -fsanitize=address,undefined (missing libasan/libubsan?): "
      f"{build.stderr.strip()[-400:]}"
    )
  probe = _run([str(folder / "probe")], timeout=60)
  if probe.returncode != 0:
    pytest.skip(
      f"sanitized programs cannot run here (a trivial one exited {probe.returncode}): {probe.stderr.strip()[-400:]}"
    )
  return compiler


def test_core_passes_its_checks_under_address_and_undefined_behaviour_sanitizers(sanitizing_compiler, tmp_path):
  binary = tmp_path / "core_test"
  build = _run(
    [sanitizing_compiler, *_FLAGS, "-Wall", "-Wextra", f"-I{_CSRC}", str(_DRIVER), "-o", str(binary)], timeout=300
  )
  assert build.returncode == 0, f"building {_DRIVER.name} failed:\n{build.stderr}"
  assert "warning" not in build.stderr, f"building {_DRIVER.name} warned:\n{build.stderr}"

  run = _run([str(binary)], timeout=300)
  report = run.stdout + run.stderr
  assert run.returncode == 0, f"core_test failed (exit {run.returncode}):\n{report[-6000:]}"
  assert "0 failures" in run.stdout, report[-2000:]
  assert "runtime error" not in report, report[-6000:]  # UBSan reports that were not fatal
