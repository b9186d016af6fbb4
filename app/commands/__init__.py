"""The `lakehouse` command's subcommands, one module per part of the system (app/cli.py joins them).

    services.py    setup, up, down, status           the local services and their artifacts
    batch.py       batch run/schedule/maintain/...   the Spark batch layer
    speed.py       speed run/produce                 the Beam speed layer and its Kafka topic
    serving.py     serve refresh, sql, anomalies, alerts   Trino
    evaluation.py  eval run/nab/odds                 detection quality
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# Options more than one module takes.
Dataset = Annotated[str, typer.Option("--dataset", "-d", help="Dataset declared in schemas/.")]
OptionalDataset = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Only this dataset.")]
