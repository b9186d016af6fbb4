"""Detection-quality benchmark: NAB and ODDS, each figure against the published one.

    python -m bench.quality_bench [--splits 10] [--no-system]

- NAB (../shared/data/nab, 20 series): the standard, reward-low-FP and reward-low-FN scores of
  each candidate detector, walk-forward without look-ahead; and the declared detector through the
  real system (Spark batch runs train at each cut, the Beam pipeline scores what follows). The
  reference of every NAB figure is the best published standard score (ARTime, 74.9, on all 58
  series; the ratio is indicative since the series differ).
- NAB hold-out (quality/holdout.py): the declared features and detector were tuned on the same
  series; here halves of the series choose among the same grid (window, time of day, neighbours)
  and every series is scored with the other half's choice, over 20 random halvings; with NAB's
  retrain fractions and with a batch run a day; and the alerts, each half choosing threshold_scale
  and alert_quiet_events. Reference: the in-sample score of the same choices.
- ODDS (../shared/data/odds, 6 tables): ROC-AUC per table and detector, mean of random 60/40
  splits (fit on 60% without labels, scored on 40%), against the best of PyOD's published
  IForest / HBOS figures for that table.
A missing reference folder is reported as skipped, with the reason, in the JSON and the table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import report
from quality import reference_data_dir


def nab_figures(folder: Path, system: bool) -> tuple[list[dict], dict]:
    from app.wiring import spark_session
    from lakehouse.settings import get_settings
    from quality import benchmark, nab

    best, best_name = benchmark.BEST_PUBLISHED
    with tempfile.TemporaryDirectory(prefix="lakehouse-nab-") as workspace:
        settings = get_settings()
        result = benchmark.nab_benchmark(
            folder, settings=settings, workspace=Path(workspace), system=system, progress=print,
            spark=spark_session(settings) if system else None,
        )
    rows = {f"{name}, walk-forward": summary for name, summary in result.detectors.items()}
    if result.system is not None:
        rows["declared, through Spark batch + Beam speed"] = result.system
    figures = []
    for name, summary in rows.items():
        for profile, label in (("standard", "standard"), ("reward_low_FP_rate", "low FP"), ("reward_low_FN_rate", "low FN")):
            score = summary["nab"][profile]
            figures.append(
                {"name": f"NAB {label}: {name}", "value": float(score), "unit": "score",
                 "reference": f"{best_name}, published standard", "reference_value": best}
            )
        # The system's own output: is_anomaly at the declared threshold_scale, first of each episode.
        figures.append({"name": f"NAB standard of its alerts: {name}", "value": float(summary["nab_with_own_flags"]["standard"]), "unit": "score",
                        "reference": f"{best_name}, published standard", "reference_value": best})
        figures.append({"name": f"NAB window F1 at the NAB threshold: {name}", "value": summary["window_f1_at_nab_threshold"], "unit": "F1"})
    if result.system_matches_offline is not None:
        figures.append({"name": "NAB: system vs walk-forward, largest score difference", "value": result.system_matches_offline, "unit": "relative score"})
    details = {"series": result.series, "rows": result.rows, "windows": result.windows, "published_standard": nab.PUBLISHED_STANDARD,
               "stages": result.stages, "seconds": result.seconds, "summaries": rows}
    return figures, details


def holdout_figures(folder: Path) -> tuple[list[dict], dict]:
    import schemas
    from quality import benchmark, holdout, nab_run, walk_forward

    corpus, windows = walk_forward.nab_corpus(folder)
    figures, details = [], {}
    for schedule, every in (("NAB's retrain fractions", None), ("daily batch runs", benchmark.DAILY)):
        result = holdout.run(schemas.load(nab_run.DATASET), benchmark.candidate_spec("declared"), corpus, windows, retrain_every=every, progress=print)
        summary = details[schedule] = result.summary()
        reference = {"reference": f"in-sample, same grid ({summary['in_sample_config']})", "reference_value": summary["in_sample_standard"]}
        for key, label in (("held_out_config", "configuration from the other half, corpus threshold (NAB's protocol)"),
                           ("held_out_config_and_threshold", "configuration and threshold from the other half")):
            for statistic in ("mean", "median", "min"):
                figures.append({"name": f"NAB hold-out standard ({schedule}), {label}: {statistic} of {len(result.splits)} halvings",
                                "value": summary[f"{key}_{statistic}"], "unit": "score", **reference})
        if result.alerts is not None:
            choice = summary["alerts_in_sample_choice"]
            alerts_reference = {"reference": f"in-sample alerts (threshold_scale {choice['threshold_scale']:g}, alert_quiet_events {choice['alert_quiet_events']})",
                                "reference_value": summary["alerts_in_sample_standard"]}
            for statistic in ("mean", "median", "min"):
                figures.append({"name": f"NAB hold-out standard ({schedule}), alerts with threshold and quiet period from the other half: {statistic}",
                                "value": summary[f"alerts_held_out_{statistic}"], "unit": "score", **alerts_reference})
    return figures, details


def odds_figures(folder: Path, splits: int) -> tuple[list[dict], dict]:
    from quality import odds

    rows = odds.run(folder, splits=splits)
    figures = [
        {"name": f"ODDS {row['table']} ROC-AUC: {row['detector']}", "value": row["roc_auc_mean"], "unit": "ROC-AUC",
         "reference": "best published (PyOD IForest/HBOS)", "reference_value": row["best_published"]}
        for row in rows
    ]
    return figures, {"splits": splits, "rows": rows}


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10, help="ODDS: random 60/40 splits per table")
    parser.add_argument("--no-system", dest="system", action="store_false", help="NAB: walk-forward only, no Spark/Beam run")
    arguments = parser.parse_args(argv)
    data = reference_data_dir()
    figures: list[dict] = []
    parameters: dict = {"reference_data": str(data), "splits": arguments.splits, "system": arguments.system}
    skipped = {}
    if (data / "nab" / "labels" / "combined_windows.json").exists():
        nab_part, parameters["nab"] = nab_figures(data / "nab", arguments.system)
        holdout_part, parameters["nab_holdout"] = holdout_figures(data / "nab")
        figures += nab_part + holdout_part
    else:
        skipped["nab"] = f"no NAB data at {data / 'nab'} (set LAKEHOUSE_REFERENCE_DATA)"
    if (data / "odds").is_dir() and any((data / "odds").glob("*.mat")):
        odds_part, parameters["odds"] = odds_figures(data / "odds", arguments.splits)
        figures += odds_part
    else:
        skipped["odds"] = f"no ODDS tables at {data / 'odds'} (set LAKEHOUSE_REFERENCE_DATA)"
    if skipped:
        parameters["skipped"] = skipped
    report.write("quality", figures, parameters)
    return figures


if __name__ == "__main__":
    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    run()
