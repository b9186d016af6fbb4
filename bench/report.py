"""Benchmark results: one JSON file per suite under .work/bench, and the combined report.

`python -m bench.report` (the last step of `make bench`) gathers every suite's JSON into
.work/bench/report.json and a readable report.md, and prints the same table. Every figure with a
reference carries ratio = value / reference value.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from lakehouse.logs import results
from lakehouse.settings import get_settings

SUITES = ("batch", "speed", "serving", "quality")
COLUMNS = ("figure", "value", "unit", "reference", "reference value", "ratio")


def _folder() -> Path:
    folder = get_settings().work_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version()}


def load_note() -> str:
    """The machine's load as a benchmark records it beside its figures (a shared machine skews them)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def _number(value: float) -> str:
    # Rates and latencies read best as whole numbers; scores, AUCs and ratios need decimals.
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _cells(figure: dict) -> list[str]:
    return [
        figure["name"], _number(figure["value"]), figure["unit"], figure.get("reference", ""),
        _number(figure["reference_value"]) if "reference_value" in figure else "",
        f"{figure['ratio']:.2f}" if "ratio" in figure else "",
    ]


def _short(parameters: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in parameters.items() if isinstance(value, (int, float, str, bool)))


def write(suite: str, figures: list[dict], parameters: dict, *, extra: dict | None = None) -> None:
    """The suite's JSON: its figures, and `extra` top-level objects (the speed suite's `targets`)."""
    for figure in figures:
        # One meaning everywhere: the figure over its reference (rows/s over rows/s, ms over ms).
        if figure.get("reference_value"):
            figure["ratio"] = figure["value"] / figure["reference_value"]
    document = {
        "suite": suite,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "parameters": parameters,
        "figures": figures,
        **(extra or {}),
    }
    path = _folder() / f"{suite}.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    table = Table(title=f"{suite} benchmark ({_short(parameters)})")
    for column in COLUMNS:
        table.add_column(column)
    for figure in figures:
        table.add_row(*_cells(figure))
    results.print(table)
    for name, reason in parameters.get("skipped", {}).items():
        results.print(f"[yellow]skipped {name}[/]: {reason}")
    results.print(f"written to {path}")


def combine() -> Path:
    """Every suite's latest results in one report.json and report.md."""
    folder = _folder()
    suites = {suite: json.loads((folder / f"{suite}.json").read_text()) for suite in SUITES if (folder / f"{suite}.json").exists()}
    missing = [suite for suite in SUITES if suite not in suites]
    document = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "missing_suites": missing,
        "suites": suites,
    }
    path = folder / "report.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    table = Table(title="Benchmark report: every figure against its reference")
    table.add_column("suite")
    for column in COLUMNS:
        table.add_column(column)
    lines = ["# Benchmark report", "", f"Generated {document['generated_at']} on {document['machine']}.", ""]
    lines += ["| suite | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for suite, body in suites.items():
        for figure in body["figures"]:
            table.add_row(suite, *_cells(figure))
            lines.append(f"| {suite} | " + " | ".join(cell.replace("|", "/") for cell in _cells(figure)) + " |")
        for name, reason in body.get("parameters", {}).get("skipped", {}).items():
            lines.append(f"\nSkipped in {suite}: {name}: {reason}")
    for suite, body in suites.items():
        # Suites measured against an issue's targets (speed, serving) carry them as plain numbers.
        if "targets" in body:
            lines += ["", f"## {suite}: targets", "", "| target | measured | goal | met | note |", "|---|---|---|---|---|"]
            for key, value in body["targets"].items():
                goal = body.get("target", {}).get(key)
                met = body.get("met", {}).get(key)
                shown = "not measured" if value is None else _number(value)
                note = body.get("reasons", {}).get(key, "").replace("|", "/")
                lines.append(f"| {key} | {shown} | {'' if goal is None else _number(goal)} | {'' if met is None else met} | {note} |")
    if missing:
        lines.append(f"\nNot run: {', '.join(missing)}.")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    results.print(table)
    results.print(f"written to {path} and {folder / 'report.md'}" + (f"; suites not run: {', '.join(missing)}" if missing else ""))
    return path


if __name__ == "__main__":
    from lakehouse import logs

    logs.configure(cache_dir=get_settings().cache_dir)
    combine()
