"""Writing benchmark results: one JSON file per suite under .work/bench and a readable table."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone

from rich.table import Table

from lakehouse.logs import results
from lakehouse.settings import get_settings


def write(suite: str, figures: list[dict], parameters: dict) -> None:
    folder = get_settings().work_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "suite": suite,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "parameters": parameters,
        "figures": figures,
    }
    path = folder / f"{suite}.json"
    path.write_text(json.dumps(document, indent=2))
    table = Table(title=f"{suite} benchmark ({parameters})")
    for column in ("figure", "value", "unit", "reference", "reference value", "ratio"):
        table.add_column(column)
    for figure in figures:
        table.add_row(
            figure["name"], f"{figure['value']:,.1f}", figure["unit"], figure.get("reference", ""),
            f"{figure['reference_value']:,.1f}" if "reference_value" in figure else "",
            f"{figure['ratio']:.2f}" if "ratio" in figure else "",
        )
    results.print(table)
    results.print(f"written to {path}")
