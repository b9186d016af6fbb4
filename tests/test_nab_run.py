"""The NAB evaluation through the real system: Spark batch runs train on the history before each
cut, the Beam pipeline scores what follows; no score may come from a model that saw its event."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import schemas
from quality import nab, nab_run, walk_forward
from schemas.declaration import DetectorSpec

pytestmark = [pytest.mark.spark, pytest.mark.beam]


def _series(name: str, start: str, rows: int, seed: int, every: str = "5min") -> walk_forward.NabSeries:
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=rows, freq=every).to_numpy(dtype="datetime64[us]")
    values = 10 + np.sin(np.arange(rows) / 12) + rng.normal(0, 0.1, rows)
    values[int(rows * 0.8)] += 6  # a spike late in the series
    return walk_forward.NabSeries(name, "synthetic", None, pd.DataFrame({"event_time": times, "value": values}))


def test_online_scores_come_from_earlier_models_and_equal_the_walk_forward(spark, warehouse, tmp_path):
    # The speed layer seeds its state from the newest week of silver, counted from the newest
    # day of the whole table (series_b's). series_a, a year older, is not in that week at all;
    # series_c (hourly) is, with only ~35 events before its second cut, fewer than its window
    # needs: both must be seeded from their whole history.
    corpus = [
        _series("series_a", "2014-03-01", 700, 1),
        _series("series_b", "2015-06-01", 680, 2),
        _series("series_c", "2015-05-12 11:00", 700, 3, every="60min"),
    ]
    fractions = (0.5,)
    # series_c is trained with the context detector (lakehouse/context_detector.py), the others
    # with the declared KNN: the same check proves its batch/speed parity at no extra run.
    context = {"overrides": [{"match": "series_c", "name": "context"}]}
    run = nab_run.run(corpus, warehouse, tmp_path / "nab", fractions=fractions, detector=context, spark=spark)

    assert [stage["model_version"] for stage in run.stages] == [1, 2]
    assert run.look_ahead_rows == 0
    expected_rows = sum(series.rows - walk_forward.cut_points(series.rows, fractions)[0] for series in corpus)
    assert len(run.scores) == expected_rows and run.scores["score"].notna().all()

    dataset = schemas.load("metrics")
    spec = DetectorSpec.model_validate({**dataset.detector.model_dump(), "min_train_rows": nab_run.MIN_TRAIN_ROWS, **context})
    assert spec.for_entity("series_c").name == "context" and spec.for_entity("series_a").name == dataset.detector.name
    windows = {}
    for series in corpus:
        spike = series.frame["event_time"].iloc[int(series.rows * 0.8)]
        windows[series.entity] = [(spike - np.timedelta64(30, "m"), spike + np.timedelta64(30, "m"))]
        offline = walk_forward.score_series(dataset, spec, series, walk_forward.cut_points(series.rows, fractions))
        online = nab_run.as_walk_forward(run, series)
        np.testing.assert_array_equal(online["row"], offline["row"])
        np.testing.assert_allclose(online["relative_score"], offline["relative_score"], rtol=1e-9, atol=1e-9)
        assert (online["train_end"].to_numpy() == offline["train_end"].to_numpy()).all()

    scored = [walk_forward.to_nab(series, nab_run.as_walk_forward(run, series), windows) for series in corpus]
    best = nab.optimise(scored, nab.PROFILES["standard"])
    assert best.true_positives == 3 and best.normalised > 50  # every spike found, few false alarms
