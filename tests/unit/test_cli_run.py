from __future__ import annotations

import pytest

from pipeline.live import run_command


@pytest.mark.parametrize(("given", "seconds"), [("1m", 60.0), ("90s", 90.0), ("60", 60.0), ("1h30m", 5400.0)])
def test_run_duration_reads_like_simulate(given: str, seconds: float) -> None:
    context = run_command.make_context("run", ["--duration", given])
    assert context.params["duration"] == seconds


def test_run_duration_rejects_nonsense_readably() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(run_command, ["--duration", "soon"])
    assert result.exit_code == 2
    assert "cannot read duration 'soon'" in result.output
    assert "Traceback" not in result.output
