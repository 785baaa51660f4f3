"""One queued generation job: its request, state, progress, cancel flag and result, observable by any door."""

from __future__ import annotations

import enum
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import ServiceError
from model.request import GenerationRequest

_ids = itertools.count(1)


class JobState(str, enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class JobImage:
    """One generated image: PNG bytes with its recipe, where it was saved, and its seed."""

    png: bytes
    path: Path | None
    seed: int
    recipe: dict


@dataclass
class JobResult:
    """What a finished job hands back to the door that submitted it."""

    images: list[JobImage]
    seeds: list[int]
    timings: dict[str, float]
    prompt_tokens: int


@dataclass
class Job:
    """A request in the service's queue. Doors wait on it; the worker updates it."""

    request: GenerationRequest
    door: str
    owner: str | None = None
    position_at_submit: int = 0
    id: str = field(default_factory=lambda: f"job-{next(_ids)}")
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: JobResult | None = None
    error: ServiceError | None = None
    version: int = 0
    wants_previews: bool = False  # the door shows live previews (app.previews fills the three fields below)
    preview: bytes | None = None  # the latest step preview, JPEG
    preview_step: int = 0
    preview_at: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def summary(self) -> dict:
        """Id, queue position and timestamps, as the doors report them with a result."""
        return {"id": self.id, "queue_position": self.position_at_submit, "submitted_at": self.submitted_at,
                "started_at": self.started_at, "finished_at": self.finished_at}

    def request_cancel(self) -> None:
        """Ask the worker to stop this job at the next step (the service drops it if still queued)."""
        self._cancel.set()
        self._touch()

    def mark_running(self) -> None:
        self.started_at = time.time()
        self.state = JobState.RUNNING
        self._touch()

    def report_step(self, step: int, total: int) -> None:
        self.step, self.total_steps = step, total
        self._touch()

    def set_preview(self, step: int, jpeg: bytes, at: float) -> None:
        self.preview, self.preview_step, self.preview_at = jpeg, step, at
        self._touch()

    def succeed(self, result: JobResult) -> None:
        self.result = result
        self._finish(JobState.SUCCEEDED)

    def fail(self, error: ServiceError) -> None:
        self.error = error
        self._finish(JobState.FAILED)

    def mark_cancelled(self, reason: ServiceError | None = None) -> None:
        """Stopped on request; `reason` replaces the plain "stopped" message (e.g. server shutdown)."""
        self.error = reason or ServiceError("cancelled", status=499)
        self._finish(JobState.CANCELLED)

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until the job changed after `seen_version` (or timeout); returns the current version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen_version or self.done, timeout)
            return self.version

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is finished; True when it is."""
        with self._changed:
            return self._changed.wait_for(lambda: self.done, timeout)

    def _finish(self, state: JobState) -> None:
        self.finished_at = time.time()
        self.state = state
        self._touch()

    def _touch(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()
