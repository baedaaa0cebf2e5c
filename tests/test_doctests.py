"""The docstring examples of the public modules run, and print what they say they print."""

import doctest
import importlib

import pytest

MODULES = (
  "otsort",
  "otsort._api",
  "otsort.losses",
  "otsort.filters",
  "otsort.pav._backend",
  "otsort.sinkhorn",
  "otsort.sinkhorn._backend",
  "otsort.sinkhorn._targets",
)
# Modules whose docstrings must hold at least one example (the others are checked if they have any).
WITH_EXAMPLES = {
  "otsort": 1,
  "otsort._api": 8,
  "otsort.losses": 5,
  "otsort.filters": 2,
  "otsort.pav._backend": 1,
  "otsort.sinkhorn._backend": 1,
  "otsort.sinkhorn._targets": 1,
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_and_match(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
  tests = [t for t in finder.find(module, name) if t.examples]
  assert sum(1 for _ in tests) >= WITH_EXAMPLES.get(name, 0), [t.name for t in tests]
  for test in tests:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
