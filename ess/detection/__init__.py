"""The pure detection engine: raw records of one input topic in, state writes, detections and
dead letters out (:class:`TopicDetector`). No Faust, no I/O: the Faust shell
(:mod:`streams`), the audit replay, fuzzing and the benchmarks all run this same code."""

from ess.detection.detector import (
    BatchOutcome,
    RawRecord,
    StateWrite,
    TopicDetector,
    build_detectors,
)

__all__ = ["BatchOutcome", "RawRecord", "StateWrite", "TopicDetector", "build_detectors"]
