"""Finding the other workers for an erasure, and merging their answers."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from pipeline.privacy import erasure
from pipeline.worker import peers
from pipeline.worker.forget_view import Refused, _everywhere


def test_a_channel_consumers_client_id_carries_its_workers_url() -> None:
    client = peers.client_id("touchline-analytics", "http://10.0.0.7:6066")
    assert peers.url_of(client) == "http://10.0.0.7:6066"
    assert peers.url_of("touchline-analytics") is None  # a consumer of another version or tool
    assert peers.url_of("someone@else") is None


def test_the_workers_are_the_members_of_the_faust_group_and_the_channel_groups() -> None:
    assignor = SimpleNamespace(
        changelog_distribution={"http://a:6066": {"t": [0]}, "http://b:6066": {}},
        external_topic_distribution={"http://a:6066": {}},
    )
    described = {
        "touchline-ingest": {"members": [{"client_id": peers.client_id("touchline-ingest", "http://c:6066")}]},
        "touchline-analytics": {
            "members": [
                {"client_id": peers.client_id("touchline-analytics", "http://a:6066")},
                {"client_id": "kafka-python-2.0"},
            ]
        },
    }
    assert peers.faust_members(assignor) == {"http://a:6066", "http://b:6066"}
    assert peers.group_members(described) == {"http://c:6066", "http://a:6066"}
    assert peers.faust_members(SimpleNamespace()) == set()


def test_merged_answers_sum_counts_and_name_holders_nobody_reported() -> None:
    here = erasure.StateDropped({"ingest": 1, "journeys": 0}, {}, {"journey resolver"})
    there = erasure.StateDropped.from_wire(
        erasure.StateDropped(
            {"journeys": 7}, {"journey resolver": 0, "journey builder 2": 41}, {"journey resolver"}
        ).wire()
    )
    merged = erasure.StateDropped()
    merged.merge(here)
    assert merged.missing() == ["journey resolver"]  # refused: retried once a worker holds it
    merged.merge(there)
    assert merged.counts == {"ingest": 1, "journeys": 7}
    assert merged.marks == {"journey resolver": 0, "journey builder 2": 41} and merged.missing() == []


def test_a_worker_that_does_not_answer_refuses_the_erasure_and_names_it() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"

    async def here() -> str:
        return "dropped here"

    with pytest.raises(Refused, match=url):
        asyncio.run(_everywhere([url], "/forget/state", {}, {}, 5.0, here()))
    assert asyncio.run(_everywhere([], "/forget/state", {}, {}, 5.0, here())) == ["dropped here"]
