"""One logging set-up for every entry point: rich on a terminal, plain timestamped lines elsewhere."""

from __future__ import annotations

import io
import logging
import re

from rich.console import Console

from lakehouse import logs


def test_outside_a_terminal_a_record_is_one_plain_timestamped_line(capsys):
    logs.configure()
    logging.getLogger("lakehouse.example").info("wrote %d rows", 12)
    logging.getLogger("lakehouse.example").debug("not at INFO")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO lakehouse\.example: wrote 12 rows", line), line


def test_verbose_shows_debug_and_quiets_no_one_of_ours(capsys):
    logs.configure(verbose=True)
    logging.getLogger("lakehouse.example").debug("details")
    assert re.search(r" DEBUG lakehouse\.example: details$", capsys.readouterr().err.strip())
    logs.configure()


def test_on_a_terminal_rich_writes_the_same_message_in_columns(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(logs, "console", Console(file=screen, force_terminal=True, width=120, color_system=None))
    try:
        logs.configure()
        logging.getLogger("lakehouse.example").warning("wrote %d rows", 12)
        text = screen.getvalue()
        assert "WARNING" in text and "lakehouse.example: wrote 12 rows" in text
        assert not re.search(r"\d{4}-\d\d-\d\d", text)  # rich shows the time of day only
    finally:
        monkeypatch.undo()
        logs.configure()


def test_the_cache_folder_given_keeps_matplotlib_out_of_home(monkeypatch, tmp_path):
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    logs.configure(cache_dir=tmp_path)
    import os

    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "matplotlib")
