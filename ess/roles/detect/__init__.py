"""The ``detect`` role: its settings, the ESS epoch it follows, its outputs and observation.

The pure detection engine is :mod:`ess.detection`; the Faust shell that runs it is
:mod:`streams`, started from here and only from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ess.roles.context import RoleContext
from ess.settings import EssSettings

if TYPE_CHECKING:
    from ess.clock import Clock
    from ess.core.reader import Trust
    from ess.detection.detector import TopicDetector
    from ess.roles.detect.observe import DetectObserver
    from ess.roles.detect.settings import DetectorSettings

__all__ = ["run", "run_detector"]


async def run(settings: EssSettings, stop: asyncio.Event, context: RoleContext) -> None:
    """The ``detect`` role until ``stop``: one detection worker of the ``detect`` section's
    group (``ESS_DETECT_*``) on the resolved cluster; ``context.detector_ready`` is set once
    it has joined its group and recovered its tables."""
    from ess.roles.detect.settings import DetectorSettings  # noqa: PLC0415

    detector = DetectorSettings.from_settings(settings, bootstrap=context.bootstrap)
    await run_detector(detector, stop, trust=context.trust, ready=context.detector_ready)


async def run_detector(
    settings: DetectorSettings,
    stop: asyncio.Event,
    *,
    trust: Trust,
    ready: asyncio.Event | None = None,
    clock: Clock | None = None,
    detectors: Sequence[TopicDetector] | None = None,
    observer: DetectObserver | None = None,
) -> None:
    """A detection worker built in code (tests, chaos campaigns, the demo):
    :func:`streams.runner.run_detector`, imported here only, when called: Faust is heavy,
    and no other role needs it."""
    from streams.runner import run_detector as run_faust_worker  # noqa: PLC0415

    await run_faust_worker(
        settings,
        stop,
        trust=trust,
        ready=ready,
        clock=clock,
        detectors=detectors,
        observer=observer,
    )
