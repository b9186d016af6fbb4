"""Detection quality: labels, the NAB score, window precision/recall and the ODDS benchmark."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def reference_data_dir() -> Path:
    """The labelled reference data (NAB series, ODDS tables): $LAKEHOUSE_REFERENCE_DATA, else
    ../shared/data next to the project. It may be absent; callers skip with a reason then."""
    configured = os.environ.get("LAKEHOUSE_REFERENCE_DATA")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "data"
