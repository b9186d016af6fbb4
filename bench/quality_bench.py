"""Detection-quality benchmark: NAB and ODDS, each figure against the published one.

    python -m bench.quality_bench [--splits 10] [--no-system]

- NAB (../shared/data/nab, 20 series): the standard, reward-low-FP and reward-low-FN scores of
  each candidate detector, walk-forward without look-ahead; and the declared detector through the
  real system (Spark batch runs train at each cut, the Beam pipeline scores what follows). The
  reference of every NAB figure is the best published standard score (ARTime, 74.9, on all 58
  series; the ratio is indicative since the series differ).
- Every figure on the 20 series the declaration was tuned on is named "(in-sample)"; per
  category too (each at its own best threshold).
- NAB hold-out (quality/holdout.py): the declared features and detector were tuned on the same
  series; here halves of the series choose among the same grid (window, time of day, neighbours,
  or another detector, the context detector included) and every series is scored with the other half's choice, over 20 random
  halvings; with NAB's retrain fractions and with a batch run a day; the alerts, each half
  choosing threshold_scale and alert_quiet_events; and the alerts fully held out, each half
  choosing the configuration and the alert settings together. Reference: the in-sample score of
  the same choices.
- NAB calibration (quality/calibration.py): the declared detector's walk-forward scores as a
  per-entity surprise (lakehouse/likelihood.py) at the best threshold, in-sample and with the
  likelihood settings and threshold from the other half, against the alerts' score.
- ODDS (../shared/data/odds): ROC-AUC per table and detector, mean of random 60/40 splits (fit
  on 60% without labels, scored on 40%), against the best of all PyOD's published detectors for
  that table (quality/odds_published.py); the ratio to the mean of the published detectors is in
  the details. The ensemble's design was chosen on these tables: named "(in-sample)".
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
    tag = " (in-sample)" if result.tuned_on_series else ""
    rows = {f"{name}, walk-forward{tag}": summary for name, summary in result.detectors.items()}
    if result.system is not None:
        rows[f"declared, through Spark batch + Beam speed{tag}"] = result.system
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
    for category, by_detector in result.categories.items():
        for name, summary in by_detector.items():
            figures.append({"name": f"NAB standard, {category} ({summary['series']} series, its own best threshold): {name}{tag}",
                            "value": summary["standard"], "unit": "score", "reference": f"{best_name}, published standard", "reference_value": best})
            figures.append({"name": f"NAB standard of its alerts, {category}: {name}{tag}", "value": summary["alerts_standard"], "unit": "score",
                            "reference": f"{best_name}, published standard", "reference_value": best})
    if result.system_matches_offline is not None:
        figures.append({"name": "NAB: system vs walk-forward, largest score difference", "value": result.system_matches_offline, "unit": "relative score"})
    details = {"series": result.series, "rows": result.rows, "windows": result.windows, "published_standard": nab.PUBLISHED_STANDARD,
               "in_sample": bool(result.tuned_on_series), "tuned_on_series": result.tuned_on_series,
               "stages": result.stages, "seconds": result.seconds, "summaries": rows, "categories": result.categories}
    return figures, details


def holdout_figures(folder: Path) -> tuple[list[dict], dict]:
    import schemas
    from quality import benchmark, holdout, nab_run, walk_forward

    corpus, windows = walk_forward.nab_corpus(folder)
    figures, details = [], {}
    for schedule, every in (("NAB's retrain fractions", None), ("daily batch runs", benchmark.DAILY)):
        # The other detectors (and the context detector) join the grid with NAB's fractions only:
        # retrained daily, IForest and the ensemble would cost tens of minutes (they score below
        # KNN with the fractions).
        configs = holdout.grid(other_detectors=holdout.OTHER_DETECTORS if every is None else (),
                               context_lengths=holdout.CONTEXT_LENGTHS if every is None else ())
        result = holdout.run(schemas.load(nab_run.DATASET), benchmark.candidate_spec("declared"), corpus, windows, configs=configs,
                             retrain_every=every, progress=print)
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
        if result.full_alerts is not None:
            label, threshold, quiet = summary["alerts_full_in_sample_choice"]
            full_reference = {"reference": f"in-sample alerts, all chosen on all series ({label}; threshold_scale {threshold:g}, alert_quiet_events {quiet})",
                              "reference_value": summary["alerts_full_in_sample_standard"]}
            for statistic in ("mean", "median", "min"):
                figures.append({"name": f"NAB hold-out standard ({schedule}), alerts fully held out (features, window, detector, threshold, quiet period from the other half): {statistic}",
                                "value": summary[f"alerts_full_held_out_{statistic}"], "unit": "score", **full_reference})
    return figures, details


def calibration_figures(folder: Path) -> tuple[list[dict], dict]:
    """The calibrated score (lakehouse/likelihood.py) at the best threshold, in-sample and held
    out, against the alerts' score (quality/calibration.py)."""
    import schemas
    from quality import benchmark, calibration, nab_run, walk_forward

    corpus, windows = walk_forward.nab_corpus(folder)
    result = calibration.run(schemas.load(nab_run.DATASET), benchmark.candidate_spec("declared"), corpus, windows, progress=print)
    summary = result.summary()
    alerts_in_sample = {"reference": "the alerts, in-sample (declared configuration, alert settings chosen on all series)",
                        "reference_value": summary["alerts_in_sample_standard"]}
    alerts_held_out = {"reference": "the alerts, alert settings from the other half (mean of the halvings)", "reference_value": summary["alerts_held_out_mean"]}
    figures = [
        {"name": f"NAB standard, calibrated score at the best threshold (in-sample: {summary['calibrated_in_sample_choice']})",
         "value": summary["calibrated_in_sample_standard"], "unit": "score", **alerts_in_sample},
        {"name": "NAB standard, relative score at the best threshold (in-sample)", "value": summary["relative_in_sample_standard"], "unit": "score", **alerts_in_sample},
    ]
    for key, label in (("calibrated_held_out_settings", "likelihood settings from the other half, one threshold over all series (NAB's protocol)"),
                       ("calibrated_held_out_settings_and_threshold", "likelihood settings and threshold from the other half"),
                       ("declared_held_out_threshold", "the declared likelihood settings (their defaults chosen on these series: in-sample settings), the threshold from the other half")):
        for statistic in ("mean", "median", "min"):
            figures.append({"name": f"NAB hold-out standard, calibrated score, {label}: {statistic} of {len(result.splits)} halvings",
                            "value": summary[f"{key}_{statistic}"], "unit": "score", **alerts_held_out})
    return figures, summary


def odds_figures(folder: Path, splits: int) -> tuple[list[dict], dict]:
    from quality import odds

    skipped: dict[str, str] = {}
    rows = odds.run(folder, splits=splits, skipped=skipped)
    figures = []
    for row in rows:
        figure = {"name": f"ODDS {row['table']} ROC-AUC: {row['detector']}" + (" (in-sample design)" if row["in_sample"] else ""),
                  "value": row["roc_auc_mean"], "unit": "ROC-AUC"}
        if row["best_published"] is not None:
            figure.update(reference=f"best of PyOD's published detectors ({row['best_published_detector']})", reference_value=row["best_published"])
        figures.append(figure)
    summary = odds.summary(rows, splits, folder, skipped)
    for name, ratio in summary["mean_ratio_to_best_published"].items():
        in_sample = " (in-sample design)" if name == "ensemble" and any(row["in_sample"] for row in rows) else ""
        figures.append({"name": f"ODDS mean ratio to the best published detector per table: {name}{in_sample}", "value": ratio, "unit": "ratio"})
        figures.append({"name": f"ODDS mean ratio to the mean of the published detectors per table: {name}{in_sample}",
                        "value": summary["mean_ratio_to_published_mean"][name], "unit": "ratio"})
    return figures, {**summary, "rows": rows}


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
        calibration_part, parameters["nab_calibration"] = calibration_figures(data / "nab")
        figures += nab_part + holdout_part + calibration_part
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
