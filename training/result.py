"""What a training run produced: the written bundle, the evidence behind it, the stage timings.

Its own module so that the pipeline (which builds a result) and the report (which renders one)
both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scoring.bundle import Bundle
from training.clv import CLVFit
from training.naming import SegmentName
from training.resegment import GateResult
from training.response import ResponseModel
from training.segmentation import Segmentation
from training.uplift import UpliftModel


@dataclass(frozen=True)
class StageRecord:
    """How long a stage took and the process's peak resident memory once it finished."""

    name: str
    seconds: float
    peak_rss_mb: float


@dataclass
class TrainResult:
    """What a training run produced: the written bundle and the evidence behind it."""

    bundle: Bundle
    path: Path
    segmentation: Segmentation
    names: list[SegmentName]
    response: ResponseModel | None
    uplift: UpliftModel | None = None
    stages: list[StageRecord] = field(default_factory=list)
    truth_ari: float | None = None
    report_path: Path | None = None
    clv: CLVFit | None = None
    #: the promotion gate's verdict when re-segmenting against a previous bundle
    gate: GateResult | None = None
    html_report_path: Path | None = None

    @property
    def promoted(self) -> bool:
        """True when ``current`` now names this bundle."""
        return self.gate is None or self.gate.promote

    @property
    def total_seconds(self) -> float:
        """Wall time of all stages."""
        return sum(s.seconds for s in self.stages)
