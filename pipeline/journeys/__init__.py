"""Journey stitching: identity resolution, per-contact summaries, journeys and their effort score.

Pure Python (no Kafka, Faust or ClickHouse): the worker feeds events to a `Stitcher` and writes
what `changes()` returns with `journey_row` / `step_rows`.
"""

from pipeline.journeys.contact import ContactSummary, Score, summarise
from pipeline.journeys.effort import EffortInputs, effort_score
from pipeline.journeys.identity import IdentityConfig, IdentityGraph, Merge, Refusal, Resolution
from pipeline.journeys.model import Journey, JourneyConfig, JourneyStep, JourneyVersion
from pipeline.journeys.rows import journey_row, step_rows
from pipeline.journeys.rules import build_journeys
from pipeline.journeys.stitcher import Stitcher
from pipeline.journeys.store import CustomerBook, JourneyStore

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
