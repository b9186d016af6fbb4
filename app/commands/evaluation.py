"""`lakehouse eval ...`: detection quality against labels, and the NAB and ODDS benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from app import wiring
from app.commands import Dataset
from app.output import console, print_frame, print_quality, results
from lakehouse.errors import LakehouseError
from lakehouse.settings import get_settings

app = typer.Typer(help="Detection quality: a run against labels, and the NAB and ODDS benchmarks.", no_args_is_help=True)


@app.command("run")
def eval_run(
    dataset: Dataset,
    labels: Annotated[Path, typer.Option("--labels", "-l", help="NAB windows JSON, or CSV with entity_id and start,end or event_time.")],
    scores: Annotated[str, typer.Option(help="merged (the merged view, through Trino), hot or batch (one layer's Delta table).")] = "merged",
    probation: Annotated[float, typer.Option(help="Leading share of each entity's events not scored (NAB: 0.15).", min=0, max=0.9)] = 0.15,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Score a dataset's anomaly scores against labels: NAB score per profile, window precision/recall/F1."""
    from quality.run_eval import evaluate_run

    with console.status(f"evaluating {dataset} ({scores}) against {labels}"):
        result = evaluate_run(dataset, labels, get_settings(), source=scores, probation=probation)
    if as_json:
        sys.stdout.write(json.dumps(result.summary(), default=float, indent=2) + "\n")
        return
    print_quality(f"{dataset}: {scores} scores against {labels.name}", {"this run": result.summary()})
    results.print(
        f"{result.entities} entities, {result.events} events ({result.scored_events} scored), {result.windows} labelled windows in range; "
        f"{result.in_sample_rows} rows were scored by a model trained on them (the batch view's rows carry their leave-one-out training scores)."
    )
    results.print(
        f"NAB's best threshold (standard profile) is {result.evaluation.optimised['standard'].threshold:.3g} on the relative scale "
        "(0 = mean training score, 1 = the contamination threshold); `detector.threshold_scale` set to it in the schema "
        "makes the system's own flags follow it from the next batch run. The alerts columns apply "
        "`detector.alert_quiet_events` to those flags (the `alerts` view); `make bench` measures both settings on NAB."
    )
    sweep = ", ".join(f"{quiet}: {score:.1f}" + (" (declared)" if quiet == result.alert_quiet_events else "") for quiet, score in result.alerts_by_quiet_events.items())
    results.print(f"NAB standard of the alerts by `detector.alert_quiet_events` (same flags): {sweep}.")
    if result.surprise is not None:
        best = result.surprise["standard"]
        results.print(f"The calibrated score `surprise` scores {best.normalised:.1f} NAB standard at its best threshold, {best.threshold:.3g}: "
                      f"one threshold for every entity, e.g. `WHERE surprise > {best.threshold:.3g}` on the `anomalies` view (chosen on these labels: in-sample).")
    if result.unlabelled_entities:
        results.print(f"entities without labels (every alarm is a false positive): {', '.join(result.unlabelled_entities[:10])}")


@app.command("nab")
def eval_nab(
    data: Annotated[Optional[Path], typer.Option(help="NAB folder (data/, labels/); default ../shared/data/nab.")] = None,
    system: Annotated[bool, typer.Option(help="Also run the declared detector through Spark batch runs and the Beam pipeline.")] = True,
    detector: Annotated[Optional[list[str]], typer.Option(help="Candidates for the offline walk-forward (default: declared, knn, lof, iforest, hbos, ensemble, context).")] = None,
    series: Annotated[Optional[list[str]], typer.Option(help="Only these series (file stems).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """The NAB benchmark without look-ahead: each detector walk-forward, and the declared one through the system.

    Walk-forward models are retrained at 15, 30, 50 and 75% of each series, as the system run does; the declared detector is also shown retrained by a batch run a day, as a scheduled batch layer would. Figures on the series the declaration was tuned on are labelled in-sample. The held-out measurement (choices made on other series) is in `make bench`.
    """
    from quality import benchmark, nab, reference_data_dir

    folder = data or reference_data_dir() / "nab"
    if not (folder / "labels" / "combined_windows.json").exists():
        raise LakehouseError(f"no NAB data at {folder} (expected data/<category>/*.csv and labels/combined_windows.json)")
    settings = get_settings()
    with console.status("NAB benchmark") as status:
        report = benchmark.nab_benchmark(
            folder, settings=settings, workspace=settings.work_dir / "eval" / "nab", system=system,
            candidates=tuple(detector) if detector else benchmark.CANDIDATES, only=series, progress=status.update,
            spark=wiring.spark_session(settings) if system else None,
        )
    if as_json:
        sys.stdout.write(json.dumps(benchmark.nab_json(report), default=float, indent=2) + "\n")
        return
    rows = {f"{name} (walk-forward)": summary for name, summary in report.detectors.items()}
    if report.system is not None:
        rows["declared, through batch + speed"] = report.system
    tuned = report.tuned_on_series
    label = f"in-sample: {tuned} of {report.series} series are those the declaration was tuned on" if tuned else "not in-sample: none of these series was tuned on"
    print_quality(f"NAB: {report.series} series, {report.rows} rows, {report.windows} windows ({label})", rows, against_published=True)
    results.print(
        "'NAB standard' is at the best threshold for these series (NAB's protocol: chosen on the scored corpus, so in-sample "
        "by construction); 'alerts' use the declared threshold_scale and alert_quiet_events"
        + (", chosen on these series (in-sample)." if tuned else ".")
    )
    published = Table(title="Published NAB standard (58 series)")
    published.add_column("detector")
    published.add_column("score", justify="right")
    for name, score in nab.PUBLISHED_STANDARD.items():
        published.add_row(name, f"{score:.1f}")
    results.print(published)
    if report.system_matches_offline is not None:
        results.print(f"system vs walk-forward scores: largest difference {report.system_matches_offline:.2e}; stages: {report.stages}")


@app.command("odds")
def eval_odds(
    data: Annotated[Optional[Path], typer.Option(help="Folder of ODDS .mat files (every one is run); default ../shared/data/odds.")] = None,
    splits: Annotated[int, typer.Option(help="Random 60/40 train/test splits per table.", min=1)] = 10,
    detector: Annotated[Optional[list[str]], typer.Option(help="Only these detectors (default: iforest, hbos, knn, lof, ensemble).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")] = False,
) -> None:
    """ROC-AUC per ODDS table and detector (fit on 60%, scored on 40%), next to PyOD's full published table.

    Every .mat table in the folder is run; where PyOD publishes the table, each figure is also given as a ratio to the best of all its published detectors and to their mean.
    """
    import pandas as pd

    from quality import odds, odds_published, reference_data_dir

    folder = data or reference_data_dir() / "odds"
    reason = odds.missing_reason(folder)
    if reason:
        raise LakehouseError(reason)
    unknown = [name for name in detector or [] if name not in odds.DETECTORS]
    if unknown:
        raise typer.BadParameter(f"unknown detector(s) {unknown}; choose from {list(odds.DETECTORS)}")
    skipped: dict[str, str] = {}
    with console.status("ODDS benchmark"):
        rows = odds.run(folder, tuple(detector) if detector else odds.DETECTORS, splits=splits, skipped=skipped)
    if as_json:
        sys.stdout.write(json.dumps(odds.summary(rows, splits, folder, skipped), indent=2) + "\n")
        return
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.drop(columns=["seconds"]).assign(in_sample=frame["in_sample"].map({True: "in-sample", False: ""}))
        frame = frame.astype(object).where(frame.notna(), "")  # a figure PyOD does not publish is left blank
    print_frame(frame, f"ODDS ROC-AUC (mean of {splits} random 60/40 split{'s' if splits > 1 else ''})")
    for column, label in (("ratio_to_best_published", "the best of all PyOD's published detectors per table"),
                          ("ratio_to_published_mean", "the mean of PyOD's published detectors per table")):
        ratios = odds.mean_ratios(rows, column)
        if ratios:
            results.print(f"mean ratio to {label}: " + ", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()))
    known = sorted({row["table"] for row in rows if row["best_published"] is not None})
    if known:
        published = Table(title=f"Published ROC-AUC, {odds_published.SOURCE}")
        for column in ("table", *odds_published.DETECTORS):
            published.add_column(column, justify="right")
        for table in known:
            published.add_row(table, *(f"{odds_published.ROC_AUC[table][name]:.3f}" for name in odds_published.DETECTORS))
        results.print(published)
    results.print("in-sample: the ensemble's design was chosen on " + ", ".join(sorted(odds.ENSEMBLE_DESIGN_TABLES)) + ".")
    for table, why in skipped.items():
        results.print(f"skipped {table}: {why}")
