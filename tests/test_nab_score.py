"""The NAB score against cases worked out by hand (the numbers below come from a calculator, not
from the code under test).

The series of every case: 10 rows at t = 0..9, one window [4, 6] (width 3). The probationary
period is floor(0.15 x 10) = 1 row. What a detection at each row is worth (standard profile):
  rows 1-3, before any window:     -1 x 0.11                                = -0.11
  row 4, p = -3/3:  sigma(-1)   / sigma(-1)                                 =  1.0
  row 5, p = -2/3:  (2/(1+e^(-10/3)) - 1) / 0.986614 = 0.931111 / 0.986614  =  0.943742
  row 6, p = -1/3:  (2/(1+e^(-5/3)) - 1)  / 0.986614 = 0.682262 / 0.986614  =  0.691518
  row 7, d = 1/2:   (2/(1+e^2.5) - 1) x 0.11 = -0.848283 x 0.11             = -0.093311
  row 8, d = 2/2:   (2/(1+e^5) - 1)   x 0.11 = -0.986614 x 0.11             = -0.108528
  row 9, d = 3/2:   (2/(1+e^7.5) - 1) x 0.11 = -0.998894 x 0.11             = -0.109878
Null (never fires) = -1 (one missed window); perfect = +1.
"""

from __future__ import annotations

import numpy as np
import pytest

from quality import nab

TIMES = np.arange(10)
WINDOWS = [(4, 6)]
STANDARD = nab.PROFILES["standard"]


def series(detected_rows: list[int], scores: np.ndarray | None = None) -> nab.Series:
    if scores is None:
        scores = np.zeros(10)
        scores[detected_rows] = 1.0
    return nab.Series("case", TIMES, scores, WINDOWS)


def test_row_weights_match_the_hand_computed_table():
    rows = nab.row_weights(series([]), STANDARD)
    expected = [None, -0.11, -0.11, -0.11, 1.0, 0.943742, 0.691518, -0.093311, -0.108528, -0.109878]
    assert rows.window.tolist() == [nab.PROBATIONARY, -1, -1, -1, 0, 0, 0, -1, -1, -1]
    np.testing.assert_allclose(rows.weights[1:], expected[1:], atol=1e-6)


def test_one_early_detection_and_one_false_alarm():
    outcome = nab.score([series([5, 8])], STANDARD, threshold=0.5)
    assert outcome.raw == pytest.approx(0.943742 - 0.108528, abs=1e-6)
    assert (outcome.null, outcome.perfect) == (-1.0, 1.0)
    assert outcome.normalised == pytest.approx(100 * (0.835214 + 1) / 2, abs=1e-4)  # 91.76
    assert (outcome.true_positives, outcome.false_negatives, outcome.false_positives) == (1, 0, 1)
    assert (outcome.precision, outcome.recall) == (0.5, 1.0)
    assert outcome.f1 == pytest.approx(2 / 3)


def test_only_the_best_detection_of_a_window_counts():
    outcome = nab.score([series([4, 5, 6])], STANDARD, threshold=0.5)
    assert outcome.raw == pytest.approx(1.0)
    assert outcome.normalised == pytest.approx(100.0)
    assert outcome.false_positives == 0


def test_detections_in_the_probationary_period_count_for_nothing():
    assert nab.score([series([0])], STANDARD, threshold=0.5).raw == pytest.approx(-1.0)


def test_missing_the_window_is_the_null_score_under_every_profile():
    for profile in nab.PROFILES.values():
        outcome = nab.score([series([])], profile, threshold=0.5)
        assert outcome.raw == -profile.fn_weight
        assert outcome.normalised == 0.0


def test_reward_low_fp_doubles_the_false_alarm_cost():
    profile = nab.PROFILES["reward_low_FP_rate"]
    outcome = nab.score([series([1, 4])], profile, threshold=0.5)
    assert outcome.raw == pytest.approx(1.0 - 0.22)
    assert outcome.normalised == pytest.approx(100 * (0.78 + 1) / 2)


def test_reward_low_fn_doubles_the_miss_cost():
    profile = nab.PROFILES["reward_low_FN_rate"]
    outcome = nab.score([series([8])], profile, threshold=0.5)
    assert outcome.raw == pytest.approx(-2.0 - 0.108528, abs=1e-6)
    # null -2, perfect +1: (-2.108528 + 2) / 3 x 100
    assert outcome.normalised == pytest.approx(-3.6176, abs=1e-3)


def test_optimise_finds_the_best_threshold_by_hand():
    # Scores: row 8 (false alarm) 0.95, row 2 (false alarm) 0.9, row 5 (in the window) 0.8, the
    # rest 0. Totals by threshold: 0.95 -> -1.108528; 0.9 -> -1.218528; 0.8 -> 0.725214;
    # 0 -> every row: 1.0 - 0.33 - 0.311717 = 0.358283. Best: 0.8.
    scores = np.zeros(10)
    scores[[8, 2, 5]] = [0.95, 0.9, 0.8]
    best = nab.optimise([series([], scores)], STANDARD)
    assert best.threshold == 0.8
    assert best.raw == pytest.approx(0.725214, abs=1e-6)
    assert nab.score([series([], scores)], STANDARD, 0.0).raw == pytest.approx(0.358283, abs=1e-6)


def test_unscored_rows_never_fire_and_a_corpus_adds_up():
    scores = np.full(10, np.nan)
    scores[4] = 1.0
    corpus = [series([], scores), nab.Series("other", TIMES, np.zeros(10), [(7, 8)])]
    outcome = nab.score(corpus, STANDARD, threshold=0.5)
    # First series: window at its first row (+1); second: its window missed (-1).
    assert outcome.raw == pytest.approx(0.0)
    assert (outcome.null, outcome.perfect) == (-2.0, 2.0)
    assert outcome.normalised == pytest.approx(50.0)


def test_profiles_file_in_nab_layout(tmp_path):
    path = tmp_path / "profiles.json"
    path.write_text('{"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}}}')
    assert nab.load_profiles(path) == {"standard": STANDARD}


def test_probationary_length_is_capped_at_750_rows():
    assert nab.probationary_length(10) == 1
    assert nab.probationary_length(4032) == 604
    assert nab.probationary_length(22695) == 750


@pytest.mark.parametrize("seed", range(6))
def test_optimise_equals_a_brute_force_sweep_with_nab_score(seed):
    rng = np.random.default_rng(seed)
    corpus = []
    for number in range(3):
        times = np.arange(200)
        # Rounded scores make runs of equal scores (a threshold cannot split them); NaN rows are unscored.
        scores = np.round(rng.random(200), 1 if seed % 2 else 3)
        scores[rng.random(200) < 0.05] = np.nan
        windows = [(start, start + int(rng.integers(3, 15))) for start in sorted(rng.choice(np.arange(40, 180, 30), size=int(rng.integers(0, 3)), replace=False))]
        corpus.append(nab.Series(f"s{number}", times, scores, windows))
    for profile in nab.PROFILES.values():
        best = nab.optimise(corpus, profile)
        sweep = [nab.score(corpus, profile, threshold) for threshold in np.unique(np.concatenate([one.scores for one in corpus]))]
        brute = max([outcome.raw for outcome in sweep if not np.isnan(outcome.threshold)] + [best.null])
        assert best.raw == pytest.approx(brute, abs=1e-9)
        if np.isfinite(best.threshold):
            again = nab.score(corpus, profile, best.threshold)
            assert (again.raw, again.true_positives, again.false_positives) == (pytest.approx(best.raw, abs=1e-9), best.true_positives, best.false_positives)
