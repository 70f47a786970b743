"""The batch-observed histogram exposes what prometheus_client's own Histogram exposes for the same
observations (the library is the oracle)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.worker.metrics import BatchHistogram

BUCKETS = (0.1, 0.25, 1, 5, 60)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == name:
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["voice", "chat"]), st.floats(0, 100, allow_nan=False)), min_size=1))
def test_same_exposition_as_the_library_histogram(observations: list[tuple[str, float]]) -> None:
    name = f"t_{uuid.uuid4().hex[:8]}_seconds"
    expected_registry = CollectorRegistry()
    expected = Histogram(name, "doc", ["channel"], buckets=BUCKETS, registry=expected_registry)
    ours = BatchHistogram(name, "doc", ["channel"], buckets=BUCKETS)
    try:
        by_channel: dict[str, list[float]] = {}
        for channel, value in observations:
            expected.labels(channel).observe(value)
            by_channel.setdefault(channel, []).append(value)
        for channel, values in by_channel.items():
            half = len(values) // 2  # two batches, so batches add up
            ours.observe_many((channel,), values[:half])
            ours.observe_many((channel,), values[half:])
        want, got = samples(expected_registry, name), samples(REGISTRY, name)
        assert want.keys() == got.keys()
        for key, value in want.items():
            assert got[key] == value or abs(got[key] - value) < 1e-6 * max(1.0, abs(value)), key
    finally:
        REGISTRY.unregister(ours)
