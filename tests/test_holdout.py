"""The held-out NAB measurement: halves, the choice each half makes, and the figures it yields.

Series of the hand-worked case: 100 rows at t = 0..99, one window [50, 54] (width 5); the
probationary period is 15 rows. Configuration A fires (score 1) at row 50 of s1 and s3 and at
row 80 of s2 and s4; configuration B does the opposite. Row 80 is (80 - 54) / (5 - 1) = 6.5
window widths past the window, so a detection there costs the full fpWeight (0.11).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import schemas
from quality import holdout, nab, walk_forward

TIMES = np.arange(100)
WINDOWS = [(50, 54)]
STANDARD = nab.PROFILES["standard"]
A, B = holdout.Config(24, False, 1), holdout.Config(48, True, 3)


def _scored(fires_in_window: set[str]) -> dict[str, nab.Series]:
    series = {}
    for name in ("s1", "s2", "s3", "s4"):
        scores = np.zeros(100)
        scores[50 if name in fires_in_window else 80] = 1.0
        series[name] = nab.Series(name, TIMES, scores, WINDOWS)
    return series


def test_each_half_is_scored_with_the_other_halfs_choice():
    scored = {A: _scored({"s1", "s3"}), B: _scored({"s2", "s4"})}
    result = holdout.held_out_score(scored, ({"s1", "s3"}, {"s2", "s4"}), STANDARD)
    # Half {s1, s3} is perfect with A, half {s2, s4} with B: each chooses its own.
    assert result.chosen == (A.label(), B.label())
    # Scored with the other half's choice, every series misses its window and fires at row 80.
    # One threshold chosen on all of them: never firing is best, the null score, 0.
    assert result.held_out_config == pytest.approx(0.0)
    # With the other half's threshold (1.0): four misses and four full false alarms.
    # raw = -4 - 4 x 0.11 = -4.44; null = -4, perfect = 4: 100 x -0.44 / 8 = -5.5.
    assert result.held_out_config_and_threshold == pytest.approx(-5.5)


def test_a_choice_that_holds_everywhere_keeps_its_score_out_of_sample():
    everywhere = _scored({"s1", "s2", "s3", "s4"})
    scored = {A: everywhere, B: _scored(set())}
    result = holdout.held_out_score(scored, ({"s1", "s3"}, {"s2", "s4"}), STANDARD)
    assert result.chosen == (A.label(), A.label())
    assert result.held_out_config == pytest.approx(100.0)
    assert result.held_out_config_and_threshold == pytest.approx(100.0)


def _corpus(categories: dict[str, int]) -> list[walk_forward.NabSeries]:
    frame = pd.DataFrame({"event_time": pd.date_range("2024-01-01", periods=3, freq="5min"), "value": [1.0, 2.0, 3.0]})
    return [walk_forward.NabSeries(f"{category}_{index}", category, None, frame) for category, count in categories.items() for index in range(count)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_halves_are_disjoint_stratified_and_reproducible(seed):
    corpus = _corpus({"artificial": 6, "known": 7, "traffic": 7})
    first, second = holdout.stratified_halves(corpus, seed)
    assert first.isdisjoint(second)
    assert first | second == {series.entity for series in corpus}
    assert len(first) == len(second) == 10
    for category in ("artificial", "known", "traffic"):
        in_first = sum(name.startswith(category) for name in first)
        in_second = sum(name.startswith(category) for name in second)
        assert abs(in_first - in_second) <= 1
    assert holdout.stratified_halves(corpus, seed) == (first, second)


def test_different_seeds_give_different_halves():
    corpus = _corpus({"artificial": 6, "known": 7, "traffic": 7})
    assert len({frozenset(holdout.stratified_halves(corpus, seed)[0]) for seed in range(5)}) > 1


def test_a_configuration_changes_the_features_and_the_detector():
    dataset = schemas.load("metrics")
    changed, spec = B.apply(dataset, dataset.detector)
    assert (changed.features.window, changed.features.time_of_day) == (48, True)
    assert spec.params["n_neighbors"] == 3
    assert spec.name == dataset.detector.name
    assert len(holdout.grid()) == 4 * 2 * 3


def test_alert_settings_are_chosen_per_half_and_a_quiet_period_silences_a_run_of_alarms():
    # Every series: a score of 2.2 on rows 50-52 (in the window) and on rows 80-99 (a run of
    # alarms 26+ rows after it, full false-alarm cost each). Thresholds above 2.2 fire nothing
    # (the null score, 0); at 2.0 without a quiet period, 3 + 20 alarms; with 24 quiet events the
    # run still alerts once at row 80 (28 events after row 52); with 48 it is silent: perfect.
    series = {}
    for name in ("s1", "s2", "s3", "s4"):
        scores = np.zeros(100)
        scores[[50, 51, 52, *range(80, 100)]] = 2.2
        series[name] = nab.Series(name, TIMES, scores, WINDOWS)
    choice = holdout.alert_choice(series, [({"s1", "s3"}, {"s2", "s4"})], STANDARD)
    assert choice.in_sample_choice == (2.0, 48)
    assert choice.in_sample == pytest.approx(100.0)
    assert choice.chosen == [((2.0, 48), (2.0, 48))]
    assert choice.held_out == [pytest.approx(100.0)]


def test_score_detections_is_nab_score_of_one_series():
    rng = np.random.default_rng(5)
    for windows in (WINDOWS, [(20, 24), (60, 70)], []):
        one = nab.Series("s", TIMES, rng.random(100), windows)
        rows = nab.row_weights(one, STANDARD)
        for threshold in (0.5, 0.9, 0.99, 2.0):
            expected = nab.score([one], STANDARD, threshold)
            assert nab.score_detections(one, rows, one.scores >= threshold, STANDARD) == pytest.approx((expected.raw, expected.null, expected.perfect))


def test_the_full_alert_choice_picks_configuration_and_alert_settings_together_per_half():
    # A fires in the window for s1, s3 and far outside for s2, s4; B the opposite (see the module
    # doc), here at 2.2, above the lowest threshold_scale of the grid (2).
    def scaled(series: dict[str, nab.Series]) -> dict[str, nab.Series]:
        return {name: nab.Series(name, one.timestamps, one.scores * 2.2, one.windows) for name, one in series.items()}

    scored = {A: scaled(_scored({"s1", "s3"})), B: scaled(_scored({"s2", "s4"}))}
    choice = holdout.full_alert_choice(scored, [({"s1", "s3"}, {"s2", "s4"})], STANDARD)
    # Each half picks the configuration that is perfect on it (at the lowest threshold that fires).
    (first, second), = choice.chosen
    assert first[0] == A.label() and second[0] == B.label()
    # Held out, every series misses its window and raises one full false alarm: -5.5 (see above).
    assert choice.held_out == [pytest.approx(-5.5)]
    assert choice.in_sample == pytest.approx(50.0 - 0.11 * 2 * 100 / 8)  # best single choice on all four


def test_the_grid_can_add_other_detectors_on_the_declared_features():
    configs = holdout.grid(other_detectors=("hbos",))
    assert len(configs) == 25 and configs[-1] == holdout.Config(96, False, 0, "hbos")
    dataset = schemas.load("metrics")
    _, spec = configs[-1].apply(dataset, dataset.detector)
    assert spec.name == "hbos" and "n_neighbors" not in spec.params


def test_the_context_detector_joins_the_grid_with_the_lags_it_needs():
    dataset = schemas.load("metrics")
    configs = holdout.grid(context_lengths=(1, 8))
    assert len(configs) == 4 * 2 * 3 + 2
    short, long = configs[-2:]
    for config, lags, params in ((short, 0, {}), (long, 7, {"context": 8})):
        changed, spec = config.apply(dataset, dataset.detector)
        assert (changed.features.lags, spec.name, spec.params) == (lags, "context", params)
    assert long.label() == "window 96, time of day off, context (8 values)"
