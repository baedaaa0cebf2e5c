"""``spearman_boosting_objective`` inside LightGBM and XGBoost (issue 12, item 5): a few boosting rounds on synthetic
eras improve the per-era Spearman correlation on held-out eras.

The eras share a non-linear signal in three features (monotone in two), under a per-era offset and scale that a
regression on the pooled target has to spend its trees on, while the per-era rank correlation ignores them.
"""

import lightgbm
import numpy as np
import pytest
import xgboost

import otsort

TRAIN_ERAS, TEST_ERAS, ROWS, FEATURES = 12, 8, 120, 5
ROUNDS = 25


def _eras(num_eras: int, seed: int):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_eras * ROWS, FEATURES))
  era = np.repeat(np.arange(num_eras), ROWS)
  signal = np.tanh(2 * x[:, 0]) + 0.5 * np.sign(x[:, 1]) * x[:, 1] ** 2 + np.sin(2 * x[:, 2])
  offset, scale = rng.normal(0, 5, num_eras), rng.uniform(0.2, 5, num_eras)
  y = offset[era] + scale[era] * (signal + rng.normal(0, 0.7, len(era)))
  return x, y, era


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def _mean_era_correlation(pred: np.ndarray, y: np.ndarray, era: np.ndarray) -> float:
  return float(np.mean([_rank_correlation(pred[era == e], y[era == e]) for e in np.unique(era)]))


def _checked(objective, seen: list):
  """The objective, recording that every gradient and Hessian handed to the library is finite with hess > 0."""

  def wrapped(preds, data):
    grad, hess = objective(preds, data)
    seen.append(bool(np.all(np.isfinite(grad)) and np.all(np.isfinite(hess)) and np.all(hess > 0)))
    return grad, hess

  return wrapped


def _start(n: int) -> np.ndarray:
  """A non-constant starting margin: at constant predictions every soft rank is tied, the correlation is 0 / 0 and
  its gradient vanishes (measured: mean |grad| 3e-7 with the Hessian's mean 1), so boosting from a constant never
  moves (xgboost's float32 predictions round the first steps away)."""
  return 1e-2 * np.random.default_rng(2).standard_normal(n)


def _train_lightgbm(objective, x, y):
  params = {"objective": objective, "verbosity": -1, "num_threads": 1, "seed": 0, "num_leaves": 4}
  booster = lightgbm.train(params, lightgbm.Dataset(x, y, init_score=_start(len(y))), ROUNDS)
  return lambda x_new, rounds: booster.predict(x_new, num_iteration=rounds)


def _train_xgboost(objective, x, y):
  params = {"tree_method": "hist", "nthread": 1, "seed": 0, "max_depth": 3, "eta": 0.3}
  booster = xgboost.train(params, xgboost.DMatrix(x, y, base_margin=_start(len(y))), ROUNDS, obj=objective)
  return lambda x_new, rounds: booster.predict(xgboost.DMatrix(x_new), iteration_range=(0, rounds))


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_boosting_on_the_spearman_objective_improves_held_out_per_era_correlation(library):
  x, y, era = _eras(TRAIN_ERAS, seed=0)
  x_test, y_test, era_test = _eras(TEST_ERAS, seed=1)
  seen = []
  objective = _checked(otsort.losses.spearman_boosting_objective(groups=era, epsilon=0.1), seen)
  predict = (_train_lightgbm if library == "lightgbm" else _train_xgboost)(objective, x, y)
  first = _mean_era_correlation(predict(x_test, 1), y_test, era_test)
  last = _mean_era_correlation(predict(x_test, ROUNDS), y_test, era_test)
  assert len(seen) == ROUNDS and all(seen), "a gradient or Hessian was not finite with hess > 0"
  assert last > first + 0.05, (
    f"{library}: held-out per-era Spearman {first:.3f} after 1 round, {last:.3f} after {ROUNDS}"
  )
  assert last > 0.6, f"{library}: held-out per-era Spearman {last:.3f} after {ROUNDS} rounds"


def test_groups_of_the_wrong_length_are_refused_naming_groups():
  objective = otsort.losses.spearman_boosting_objective(groups=np.zeros(5, np.int32), epsilon=0.1)
  with pytest.raises(ValueError, match="groups"):
    objective(np.zeros(6), np.arange(6.0))
