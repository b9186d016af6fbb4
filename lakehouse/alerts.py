"""Alerts: the first alarm of each episode, from one entity's alarm flags in event order.

An event raises an alert when it is an alarm (`is_anomaly`) and none of the entity's previous
`quiet_events` events was. The rule looks only at stored flags, so it gives the same answer
whenever it is evaluated, late events included: the batch job flags the batch view's alerts with
this function (batch/score.py), the speed layer flags hot rows from each entity's previous flags
in its state, writing later rows again when a late event changes them (speed/alert_flags.py),
the serving layer's `alerts` view reads both flags (serving/views.py), and the quality
evaluation uses this function; Beam, Spark and Trino tests check they agree.
"""

from __future__ import annotations

import numpy as np


def first_of_episodes(flags: np.ndarray, quiet_events: int) -> np.ndarray:
    """Alerts (bool) for alarm flags of one entity in event order (event time, then event id)."""
    flags = np.asarray(flags, dtype=bool)
    if quiet_events <= 0:
        return flags.copy()
    alarms = np.flatnonzero(flags)
    # An alarm is an alert when the previous alarm is more than `quiet_events` events back.
    gaps = np.diff(alarms, prepend=-(quiet_events + 1))
    alerts = np.zeros(len(flags), dtype=bool)
    alerts[alarms[gaps > quiet_events]] = True
    return alerts
