"""KPI settings (`KpiConfig`): the service-level target and headline formula per channel, short
abandons, allowed lateness, idle partitions and how long contacts are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SlFormula = Literal["genesys", "connect"]

DEFAULT_SL_THRESHOLDS: dict[str, float] = {
    "voice": 20.0,
    "chat": 60.0,
    "web": 60.0,
    "sms": 900.0,
    "social": 3600.0,
    "email": 86400.0,
}


class KpiConfig(BaseModel):
    """KPI settings. Thresholds are applied when measures are taken and stored on every partial
    row (`sl_threshold_seconds`, `short_abandon_seconds`, `sl_headline`), so the views need no
    configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sl_threshold_seconds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SL_THRESHOLDS),
        description="Service-level target T per channel, seconds.",
    )
    sl_headline: dict[str, SlFormula] = Field(
        default_factory=dict, description="Headline service-level formula per channel (default genesys)."
    )
    default_sl_threshold_seconds: float = Field(60.0, gt=0, description="T for a channel not listed.")
    default_sl_headline: SlFormula = "genesys"
    short_abandon_seconds: float = Field(5.0, ge=0, description="Abandons with a shorter wait are short abandons.")
    allowed_lateness_seconds: float = Field(300.0, ge=0, description="Watermark = max event time - this.")
    idle_timeout_seconds: float = Field(
        30.0, gt=0, description="A partition without events this long (wall clock) advances with the wall clock."
    )
    ended_retention_hours: float = Field(26.0, gt=0, description="Contacts are forgotten this long after `ended`.")
    unended_retention_days: float = Field(
        0.0, ge=0, description="Contacts that never end are forgotten this long after their last event; 0: never."
    )

    def threshold(self, channel: str) -> float:
        return self.sl_threshold_seconds.get(channel, self.default_sl_threshold_seconds)

    def headline(self, channel: str) -> SlFormula:
        return self.sl_headline.get(channel, self.default_sl_headline)
