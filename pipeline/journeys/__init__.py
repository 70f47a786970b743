"""Journey stitching: identity resolution, per-contact summaries, journeys and their effort score.

Pure Python (no Kafka, Faust or ClickHouse): the worker feeds events to a `Stitcher` and writes
what `changes()` returns with `journey_row` / `step_rows`.
"""

from pipeline.journeys.contact import ContactSummary, Score, summarise
from pipeline.journeys.effort import EffortInputs, effort_score
from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge, Refusal, Resolution
from pipeline.journeys.lifecycle import (
    CustomerBook,
    Journey,
    JourneyConfig,
    JourneyStep,
    JourneyStore,
    JourneyVersion,
    Stitcher,
    build_journeys,
    journey_row,
    step_rows,
)

__all__ = [
    "ContactSummary",
    "CustomerBook",
    "EffortInputs",
    "IdentityConfig",
    "IdentityGraph",
    "Journey",
    "JourneyConfig",
    "JourneyStep",
    "JourneyStore",
    "JourneyVersion",
    "Merge",
    "Refusal",
    "Resolution",
    "Score",
    "Stitcher",
    "build_journeys",
    "effort_score",
    "journey_row",
    "step_rows",
    "summarise",
]
