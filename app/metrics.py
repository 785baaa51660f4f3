"""Prometheus metrics written by hand in the text exposition format (no extra dependency)."""

from __future__ import annotations

import threading
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; wide enough for a CPU test run (sub-second) and a 1536-class image on a slow card.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
OUTCOMES = ("succeeded", "failed", "cancelled", "out_of_memory", "rejected")


class Histogram:
    """Cumulative-bucket histogram for one label value."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class Metrics:
    """The app's counters, gauges and per-stage latency histograms; `render()` gives /metrics text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs = {outcome: 0 for outcome in OUTCOMES}
        self.errors: dict[str, int] = {}
        self.images = 0
        self.submitted = 0
        self.stages: dict[str, Histogram] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read at scrape time (queue depth, readiness, ...)."""
        self._gauges[name] = (help_text, read)

    def job_submitted(self) -> None:
        with self._lock:
            self.submitted += 1

    def job_finished(self, outcome: str, images: int = 0) -> None:
        with self._lock:
            self.jobs[outcome] = self.jobs.get(outcome, 0) + 1
            self.images += images

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def observe_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages.setdefault(stage, Histogram(STAGE_BUCKETS)).observe(seconds)

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self._lock:
            lines: list[str] = []
            for name, (help_text, read) in sorted(self._gauges.items()):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {float(read())}"]
            lines += _counter("zimage_jobs_total", "Finished jobs by outcome.", "outcome", self.jobs)
            lines += _counter("zimage_errors_total", "Errors answered to clients, by code.", "code", self.errors)
            lines += ["# HELP zimage_jobs_submitted_total Jobs accepted into the queue.",
                      "# TYPE zimage_jobs_submitted_total counter", f"zimage_jobs_submitted_total {self.submitted}"]
            lines += ["# HELP zimage_images_total Images generated.", "# TYPE zimage_images_total counter",
                      f"zimage_images_total {self.images}"]
            lines += self._render_stages()
        return "\n".join(lines) + "\n"

    def _render_stages(self) -> list[str]:
        name = "zimage_stage_seconds"
        lines = [f"# HELP {name} Latency of each stage of a job (queue wait, engine stages, encoding).",
                 f"# TYPE {name} histogram"]
        for stage, hist in sorted(self.stages.items()):
            for bound, count in zip(hist.buckets, hist.counts):
                lines.append(f'{name}_bucket{{stage="{stage}",le="{bound}"}} {count}')
            lines.append(f'{name}_bucket{{stage="{stage}",le="+Inf"}} {hist.total}')
            lines.append(f'{name}_sum{{stage="{stage}"}} {hist.sum}')
            lines.append(f'{name}_count{{stage="{stage}"}} {hist.total}')
        return lines


def _counter(name: str, help_text: str, label: str, values: dict[str, int]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    lines += [f'{name}{{{label}="{key}"}} {value}' for key, value in sorted(values.items())]
    return lines
