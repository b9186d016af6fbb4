"""The notebooks run top to bottom on the demo's warehouse, so they never rot."""

from __future__ import annotations

import json

import pytest

from app.notebooks import NOTEBOOKS, execute
from lakehouse.settings import get_settings

pytestmark = [pytest.mark.e2e, pytest.mark.spark, pytest.mark.beam, pytest.mark.trino]


@pytest.mark.parametrize("name", sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_and_plots(demo, name, tmp_path):
    executed = json.loads(execute(NOTEBOOKS / name, tmp_path, get_settings()).read_text())
    outputs = [output for cell in executed["cells"] if cell["cell_type"] == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    # Each notebook draws at least one plot, rendered as an image.
    assert any("image/png" in output.get("data", {}) for output in outputs)


def test_committed_notebooks_carry_no_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        assert not any(cell.get("outputs") for cell in cells if cell["cell_type"] == "code"), path.name
