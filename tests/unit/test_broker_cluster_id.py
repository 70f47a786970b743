from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tools import broker


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 as the first byte encodes to '-' in base64url: Kafka's storage tool would read that id as an option
    draws: Iterator[uuid.UUID] = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    cluster_id = broker._new_cluster_id()
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22


def test_random_cluster_ids_are_valid() -> None:
    ids = [broker._new_cluster_id() for _ in range(2000)]
    assert all(not i.startswith("-") and len(i) == 22 for i in ids)
