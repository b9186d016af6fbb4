"""The calibrated score (lakehouse/likelihood.py): its arithmetic, no look-ahead, and batch (fold)
equal to streaming (step by step, or folds resumed from a saved state)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import norm

from lakehouse.likelihood import MIN_SPREAD, LikelihoodSettings, LikelihoodState, fold, initial_state, step, surprise_of

# The declared defaults' clip and peak, on a short history: the streaming and resuming tests cover
# the whole state (the peak included); PLAIN is the bare running distribution.
SETTINGS = LikelihoodSettings(recent=3, history=50, min_history=5, prior_weight=0)
PLAIN = LikelihoodSettings(recent=3, history=50, min_history=5, prior_weight=0, clip=0, peak_half_life=0)


def _scores(seed: int = 1, count: int = 400) -> np.ndarray:
    scores = np.random.default_rng(seed).normal(0.0, 0.3, count)
    scores[:7] = np.nan  # unscored (no model yet)
    scores[300:305] += 6.0  # an episode
    return scores


def test_surprise_is_minus_log10_of_the_normal_upper_tail():
    assert surprise_of(0.0, 0.0, 1.0) == pytest.approx(-math.log10(0.5))
    assert surprise_of(2.0, 1.0, 0.25) == pytest.approx(-math.log10(norm.sf(2.0)))
    # Far in the tail, where 1 - cdf would round to 0, it stays finite and keeps growing.
    assert surprise_of(30.0, 0.0, 1.0) == pytest.approx(-norm.logsf(30.0) / math.log(10), rel=1e-9)
    # A flat history has a floor on its spread.
    assert surprise_of(MIN_SPREAD, 0.0, 0.0) == pytest.approx(-math.log10(norm.sf(1.0)))


def test_the_running_distribution_is_the_mean_and_variance_of_the_recent_means():
    settings = LikelihoodSettings(recent=2, history=1000, min_history=1, prior_weight=0, clip=0, peak_half_life=0)
    state = LikelihoodState()
    values = [1.0, 3.0, 2.0, 6.0]
    for value in values:
        step(state, value, settings)
    means = [1.0, 2.0, 2.5, 4.0]  # of the last two scores
    assert state.count == 4 and state.recent == [2.0, 6.0]
    assert state.mean == pytest.approx(np.mean(means)) and state.variance == pytest.approx(np.var(means))


def test_an_event_is_judged_against_earlier_events_only():
    scores = _scores()
    surprises, _ = fold(scores, SETTINGS)
    changed = scores.copy()
    changed[250:] = 50.0  # the future changes completely
    again, _ = fold(changed, SETTINGS)
    np.testing.assert_array_equal(surprises[:250], again[:250])
    assert again[250] > 10  # and the first changed event is judged against the unchanged past


def test_warm_up_unscored_events_and_the_episode():
    surprises, state = fold(_scores(), PLAIN)
    assert np.isnan(surprises[:7]).all()  # unscored: no surprise, no state
    assert (surprises[7 : 7 + PLAIN.min_history] == 0).all()  # warming up: no evidence yet
    assert surprises[300:305].min() > 5 and np.nanmedian(surprises[100:300]) < 1
    assert state.count == 400 - 7


def test_an_episode_reports_its_onset_and_stronger_events_only():
    """peak_half_life: a surprise counts when it beats the entity's decaying peak of earlier ones."""
    settings = dataclasses.replace(PLAIN, peak_half_life=10)
    plain, _ = fold(_scores(), PLAIN)
    peaks, state = fold(_scores(), settings)
    onset = 300 + int(np.argmax(plain[300:305] > 5))
    assert peaks[onset] == plain[onset] > 5
    # Later events of the episode count only where they beat the peak before them.
    running = plain[onset]
    for position in range(onset + 1, 305):
        running *= 0.5 ** (1 / 10)
        assert peaks[position] == (plain[position] if plain[position] > running else 0.0)
        running = max(running, plain[position])
    assert np.count_nonzero(peaks[100:300] > 0) < np.count_nonzero(plain[100:300] > 0)
    assert state.peak > 0


def test_the_clip_keeps_a_spike_from_numbing_the_entity():
    """clip: a spike is learnt as a value `clip` spreads away, so the variance stays the entity's
    own and the next spike is as surprising as the first."""
    scores = _scores(seed=2)
    scores[200] += 40.0
    scores[260] += 6.0
    clip = dataclasses.replace(PLAIN, clip=6.0)
    plain, clipped = fold(scores, PLAIN)[0], fold(scores, clip)[0]
    np.testing.assert_array_equal(clipped[:201], plain[:201])  # the same until the spike is learnt
    assert clipped[260] > 5 and plain[260] < clipped[260] / 2
    # Right after the spike: its square dominates the plain variance, not the clipped one.
    assert fold(scores[:201], clip)[1].variance < fold(scores[:201], PLAIN)[1].variance / 10


@pytest.mark.parametrize("cut", [0, 1, 6, 150, 302, 399, 400])
def test_a_fold_resumed_from_a_saved_state_equals_one_fold_and_the_stream(cut):
    scores = _scores(seed=4)
    whole, final = fold(scores, SETTINGS)
    first, middle = fold(scores[:cut], SETTINGS)
    second, resumed = fold(scores[cut:], SETTINGS, middle)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    assert resumed == final
    # One event at a time, as the speed layer's per-entity state does.
    state = LikelihoodState()
    streamed = [step(state, score, SETTINGS) for score in scores.tolist()]
    np.testing.assert_array_equal(np.asarray(streamed), whole)


def test_the_relative_scales_prior_puts_the_threshold_at_the_contaminations_quantile():
    settings = LikelihoodSettings(prior_weight=10, peak_half_life=0)
    state = initial_state(settings, contamination=0.01)
    assert (state.count, state.mean) == (10, 0.0)
    # A relative score of 1 (the contamination threshold) is as surprising as 1 in 100 at first.
    assert step(state.copy(), 1.0, settings) == pytest.approx(2.0)
    assert step(state.copy(), 0.0, settings) == pytest.approx(-math.log10(0.5))
    assert initial_state(LikelihoodSettings(prior_weight=0), 0.01) == LikelihoodState()


def test_settings_validate_themselves():
    with pytest.raises(ValueError, match="positive"):
        LikelihoodSettings(recent=0)
