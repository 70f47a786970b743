"""The other workers of this deployment, by the URL of their web port, for what one worker must ask
of all (an erasure: `pipeline.worker.forget_view`).

Two sources, because a worker can hold state through either: the members of the Faust group, as
its assignor spread the table partitions at the last rebalance (every member gets its URL there),
and the members of the channel consumer groups (`<app id>-ingest`, `<app id>-analytics`: batched
aiokafka consumers outside Faust), whose client id ends with the worker's URL (`client_id`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.topics import admin_client

SEPARATOR = "@"


def client_id(group_id: str, url: str) -> str:
    """The client id of a channel consumer: its group and how other workers reach its worker."""
    return f"{group_id}{SEPARATOR}{url}"


def url_of(client: str) -> str | None:
    """The worker URL a channel consumer's client id carries (None: not one of ours)."""
    _, separator, url = client.partition(SEPARATOR)
    return url if separator and url.startswith(("http://", "https://")) else None


def faust_members(assignor: Any) -> set[str]:
    """The Faust group's members at the last rebalance (each one's URL, itself included)."""
    urls = set(getattr(assignor, "changelog_distribution", {}) or {})
    urls |= set(getattr(assignor, "external_topic_distribution", {}) or {})
    return {str(url) for url in urls}


def group_members(described: Mapping[str, Any]) -> set[str]:
    """The worker URLs of the members of the described consumer groups (`describe_groups`)."""
    urls: set[str] = set()
    for group in described.values():
        for member in group.get("members", []) or []:
            url = url_of(str(member.get("client_id", "")))
            if url is not None:
                urls.add(url)
    return urls


async def discover(
    own_url: str, assignor: Any, bootstrap: str, groups: Iterable[str], options: Mapping[str, Any], timeout: float
) -> list[str]:
    """The URLs of every other worker: the Faust group's and the channel groups' members."""

    def described() -> Mapping[str, Any]:
        admin = admin_client(bootstrap, timeout, options)
        try:
            answer: Mapping[str, Any] = admin.describe_groups(list(groups))
            return answer
        finally:
            admin.close()

    urls = faust_members(assignor)
    if groups:
        urls |= group_members(await asyncio.to_thread(described))
    return sorted(urls - {own_url.rstrip("/")} - {own_url})
