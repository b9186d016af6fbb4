"""Alerts: the first alarm of each episode (lakehouse/alerts.py), on cases worked out by hand.
The serving layer's `alerts` view is checked against the same function on Trino
(tests/test_merged_view.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lakehouse.alerts import first_of_episodes


def _flags(alarms: list[int], count: int = 20) -> np.ndarray:
    flags = np.zeros(count, dtype=bool)
    flags[alarms] = True
    return flags


def _alerts(alarms: list[int], quiet: int, count: int = 20) -> list[int]:
    return np.flatnonzero(first_of_episodes(_flags(alarms, count), quiet)).tolist()


def test_an_alarm_within_the_quiet_period_of_an_earlier_one_is_not_an_alert():
    # quiet 3: 2 starts an episode; 4 and 5 are within 3 events of an alarm; 9 is 4 after 5.
    assert _alerts([2, 4, 5, 9], quiet=3) == [2, 9]


def test_the_quiet_period_counts_from_the_latest_alarm_not_the_latest_alert():
    # A run of alarms one apart stays one episode however long it lasts.
    assert _alerts(list(range(3, 15)), quiet=2) == [3]
    # Gaps of exactly `quiet` events keep the episode going; one more starts a new one.
    assert _alerts([0, 3, 6, 10], quiet=3) == [0, 10]


def test_the_first_event_can_alert_and_no_quiet_period_keeps_every_alarm():
    assert _alerts([0, 1, 7], quiet=5) == [0, 7]
    assert _alerts([0, 1, 7], quiet=0) == [0, 1, 7]


@pytest.mark.parametrize("quiet", [0, 1, 4, 48])
def test_no_alarm_no_alert_and_alerts_are_alarms(quiet):
    generator = np.random.default_rng(quiet)
    flags = generator.random(500) < 0.05
    alerts = first_of_episodes(flags, quiet)
    assert not alerts[~flags].any()
    assert not first_of_episodes(np.zeros(30, dtype=bool), quiet).any()
    assert first_of_episodes(np.zeros(0, dtype=bool), quiet).shape == (0,)
