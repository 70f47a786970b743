"""`touchline forget` through a worker: a 503 (a rebalance under way, nothing deleted) is asked
again, as the worker's answer says, and said on stderr; any other refusal ends the command at once
with the worker's reason and no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.privacy import forget_cli
from tests.support.fake_http import JsonHandler, serving

ERASED = {"subject": {"kind": "customer_id", "contacts": 2, "customers": 1}, "tables": {}, "state": {}}


class _Worker(JsonHandler):
    answers: list[tuple[int, dict[str, Any]]] = []
    asked: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        self.asked.append(json.loads(self.body()))
        self.answer(*(self.answers.pop(0) if self.answers else (503, {"error": "still busy"})))


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(forget_cli, "FORGET_BUSY_WAIT", 0.05)
    _Worker.answers, _Worker.asked = [], []
    with serving(_Worker) as port:
        yield f"http://127.0.0.1:{port}"


def test_a_busy_worker_is_asked_again_until_it_erases(
    worker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = {"error": "no worker holds the journey resolver right now (being assigned): retry shortly"}
    _Worker.answers = [(503, busy), (503, busy), (200, ERASED)]
    answer = forget_cli._through_worker(Settings(data_dir=tmp_path), worker, "customer_id", "C1")
    assert answer == ERASED
    assert _Worker.asked == [{"kind": "customer_id", "value": "C1"}] * 3
    err = capsys.readouterr().err
    assert err.count("the worker is busy") == 2 and "being assigned" in err


def test_a_worker_busy_for_too_long_ends_the_command_with_its_reason(
    worker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(forget_cli, "FORGET_BUSY_SECONDS", 0.3)
    with pytest.raises(SystemExit) as ended:
        forget_cli._through_worker(Settings(data_dir=tmp_path), worker, "customer_id", "C1")
    assert ended.value.code == 1
    assert len(_Worker.asked) >= 2
    err = capsys.readouterr().err
    assert "the worker refused" in err and "still busy" in err and "Traceback" not in err


def test_any_other_refusal_is_not_asked_again(worker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _Worker.answers = [(400, {"error": "unknown kind"}), (200, ERASED)]
    with pytest.raises(SystemExit):
        forget_cli._through_worker(Settings(data_dir=tmp_path), worker, "customer_id", "C1")
    assert len(_Worker.asked) == 1
    assert "unknown kind" in capsys.readouterr().err
