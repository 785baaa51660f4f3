"""The generation service: one bounded queue serves every door; worker threads (one per job slot: the
in-process engine, or each Ray replica) take jobs from it in order."""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

from app.control import image_summary
from app.device_errors import free_device_memory, is_fatal_device_error, is_out_of_memory
from app.engine_loader import EngineFactory
from app.errors import ServiceError, queue_full
from app.history import History
from app.jobs import Job, JobImage, JobResult
from app.loras import lora_fingerprints
from app.metadata import build_recipe, encode_png
from app.metrics import Metrics
from app.previews import capture_preview
from app.redaction import public_engine_info, redact
from app.settings import Settings
from app.fields import DOOR_MAX_SEED
from app.validation import check_prompt_tokens, check_request, check_text
from model.errors import GenerationCancelled, InvalidRequestError
from model.errors import OutOfMemoryError as EngineOutOfMemory
from model.protocol import EngineProtocol
from model.request import (ENGINE_LIMITS, EngineLimits, GenerationRequest, GenerationResult, StepProgress,
                           encoded_prompts)

logger = logging.getLogger(__name__)

MEMORY_ERRORS = ("out_of_memory", "does_not_fit")
# Time a cancelled job needs to stop (one step) and its client to get the answer.
STOP_MARGIN_SECONDS = 5.0


class EngineState:
    """Names of the engine's life stages, as /health and the UI banner report them."""

    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    UNAVAILABLE = "unavailable"


class GenerationService:
    """Queue + workers. `submit()` from any thread; `settings.job_slots` workers run jobs in order."""

    def __init__(self, settings: Settings, load_engine: EngineFactory, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._load_engine = load_engine
        self.history = History(settings.output_dir, settings.history_max_images, settings.history_max_days)
        self._engine: EngineProtocol | None = None
        self.engine_info: dict[str, Any] = {}
        self.engine_state = EngineState.LOADING
        self.unavailable_error: ServiceError | None = None
        self.device_failed = False
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        # Re-entrant: begin_shutdown may run in a signal handler on a thread that holds the lock.
        self._cond = threading.Condition(threading.RLock())
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.metrics.add_gauge("zimage_queue_depth", "Jobs waiting behind the running ones.", lambda: len(self._waiting))
        self.metrics.add_gauge("zimage_jobs_running", "Jobs being generated now (at most one per job slot).",
                               lambda: len(self._running))
        self.metrics.add_gauge("zimage_model_ready", "1 when the model is loaded and warmed up.",
                               lambda: int(self.ready))

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the first worker: it loads the engine, warms it up, starts the others, then serves the queue."""
        self._start_worker(self._worker_main, "zimage-worker")

    def _start_worker(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def begin_shutdown(self, grace_seconds: float | None = None) -> None:
        """Non-blocking (safe from a signal handler): refuse new jobs, drop waiting ones, and cancel the
        running job if it is still going after `grace_seconds`, so its client gets a 503 in time."""
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        with self._cond:
            self._stopping = True
            dropped = list(self._waiting)
            self._waiting.clear()
            running = list(self._running)
            self._cond.notify_all()
        for job in dropped:
            job.fail(ServiceError("shutting_down", status=503))
        for job in running:
            timer = threading.Timer(grace, self._cancel_after_grace, args=(job, grace))
            timer.daemon = True
            timer.start()

    def _cancel_after_grace(self, job: Job, grace: float) -> None:
        if not job.done:
            logger.warning("shutdown: cancelling %s after %.0f s grace", job.id, grace)
            job.request_cancel()

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Blocking stop: begin_shutdown, then wait for the worker (bounded)."""
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        running = list(self._running)
        self.begin_shutdown(grace)
        deadline = time.monotonic() + grace + STOP_MARGIN_SECONDS
        for job in running:
            if not job.wait(max(0.0, deadline - time.monotonic())):
                job.request_cancel()
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline + STOP_MARGIN_SECONDS - time.monotonic()))
            if thread.is_alive():
                logger.error("shutdown: %s did not stop in time (engine call still running)", thread.name)
        self._close_engine()
        logger.info("generation service stopped")

    @property
    def ready(self) -> bool:
        return self.engine_state == EngineState.READY

    # ---- doors ------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, door: str, owner: str | None = None,
               previews: bool = False) -> Job:
        """Validate, assign the seed, and enqueue; raises ServiceError (not ready, bad input, queue full).
        `previews`: the door shows live step previews (only when the `previews` setting is on)."""
        self.require_ready()
        check_request(request, self.settings, door)
        # The prompts the engine will encode, counted as its memory admission counts them.
        limit = self.prompt_token_limit
        tokens = max(check_prompt_tokens(field, text, limit, self.count_tokens)
                     for field, text in encoded_prompts(request).items())
        seed = secrets.randbelow(DOOR_MAX_SEED + 1) if request.seed < 0 else request.seed
        # Raise the truncation point to the prompt's length: prompts are never cut silently.
        request = dataclasses.replace(request, seed=seed,
                                      max_sequence_length=max(tokens, request.max_sequence_length))
        with self._cond:
            if self._stopping:
                raise ServiceError("shutting_down", status=503)
            if len(self._waiting) >= self.settings.queue_size:
                self.metrics.job_finished("rejected")
                raise queue_full(len(self._waiting))
            ahead = len(self._waiting) + len(self._running)
            job = Job(request=request, door=door, owner=owner, position_at_submit=ahead,
                      wants_previews=previews and self.settings.previews)
            self._waiting.append(job)
            self.metrics.job_submitted()
            self._cond.notify_all()
        logger.info("%s queued from %s (%d ahead, seed %d)", job.id, door, ahead, seed)
        return job

    def require_ready(self) -> None:
        """Raise the explanation doors show while the engine is loading or unavailable."""
        if self.engine_state == EngineState.UNAVAILABLE and self.unavailable_error is not None:
            raise self.unavailable_error
        if not self.ready:
            raise ServiceError("loading", status=503)

    def count_tokens(self, prompt: str) -> int:
        self.require_ready()
        return int(self._engine.count_tokens(check_text("prompt", prompt)))

    @property
    def limits(self) -> EngineLimits:
        """The loaded engine's limits (the static ENGINE_LIMITS until it is loaded)."""
        return self._engine.limits if self._engine is not None else ENGINE_LIMITS

    @property
    def prompt_token_limit(self) -> int:
        """Most tokens a prompt may have: the setting, or fewer where the checkpoint's RoPE table holds fewer."""
        capacity = self.limits.max_prompt_tokens
        return min(self.settings.max_prompt_tokens, capacity) if capacity else self.settings.max_prompt_tokens

    def jobs_ahead(self, job: Job) -> int:
        """How many jobs are ahead of `job`: the running ones plus those queued before it."""
        with self._cond:
            try:
                index = self._waiting.index(job)
            except ValueError:
                return 0
            return index + len(self._running)

    def cancel(self, job: Job) -> None:
        """Stop a job: a queued one leaves the queue at once, a running one stops at its next step."""
        with self._cond:
            queued = job in self._waiting
            if queued:
                self._waiting.remove(job)
        job.request_cancel()
        if queued:
            job.mark_cancelled()
            self.metrics.job_finished("cancelled")

    def cancel_owned_by(self, owner: str) -> int:
        """Cancel every unfinished job submitted by `owner` (a browser session); returns the count."""
        with self._cond:
            jobs = [j for j in self._waiting if j.owner == owner]
            jobs += [j for j in self._running if j.owner == owner]
        for job in jobs:
            self.cancel(job)
        return len(jobs)

    def replica_states(self) -> dict[str, int] | None:
        """Ray replicas by state (RUNNING, STARTING, ...) in Ray mode; None for the in-process engine."""
        read = getattr(self._engine, "replica_states", None)
        return read() if read is not None else None

    def running_for(self) -> float:
        """Seconds the longest-running job has been running (0 when idle): the watchdog reads this."""
        started = [job.started_at for job in list(self._running) if job.started_at]
        return time.time() - min(started) if started else 0.0

    # ---- worker -----------------------------------------------------------------------------
    def _worker_main(self) -> None:
        if not self._load():
            return
        for slot in range(1, self.settings.job_slots):
            self._start_worker(self._serve_queue, f"zimage-worker-{slot}")
        self._serve_queue()

    def _serve_queue(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._stopping)
                if self._stopping:
                    return
                job = self._waiting.popleft()
                self._running.append(job)
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running.remove(job)

    def _close_engine(self) -> None:
        """Release what the engine holds outside this process (Ray replicas); the local engine has nothing."""
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()

    def _load(self) -> bool:
        """Load and warm up the engine; on failure stay alive and explain (never crash-loop)."""
        started = time.perf_counter()
        try:
            self._engine = self._load_engine()
            self.engine_info = public_engine_info(self._engine.describe())  # no absolute paths
            self.metrics.observe_stage("load", time.perf_counter() - started)
            if self.settings.warmup:
                self.engine_state = EngineState.WARMING_UP
                warm_start = time.perf_counter()
                self._engine.warmup(self.settings.warmup_size_list)
                self.metrics.observe_stage("warmup", time.perf_counter() - warm_start)
        except ServiceError as err:
            logger.error("engine unavailable: %s", err)
            self.unavailable_error = err
        except Exception as err:  # a broken install must leave the app serving its explanation
            logger.exception("engine failed to load")
            detail = redact(f"{type(err).__name__}: {err}")  # the log above has the full text
            self.unavailable_error = ServiceError("load_failed", status=503, detail=detail)
        if self.unavailable_error is not None:
            self.engine_state = EngineState.UNAVAILABLE
            return False
        if self.replica_states() is not None:
            self.metrics.add_gauge("zimage_replicas_running", "Ray engine replicas serving jobs.",
                                   lambda: self.replica_states().get("RUNNING", 0))
            self.metrics.add_gauge("zimage_replicas", "Ray engine replicas in any state (starting ones too).",
                                   lambda: sum(self.replica_states().values()))
        self.engine_state = EngineState.READY
        logger.info("engine ready in %.1f s: %s", time.perf_counter() - started, self.engine_info)
        return True

    def _run(self, job: Job) -> None:
        """Run one job; every failure ends up on the job, never in the worker."""
        job.mark_running()
        self.metrics.observe_stage("queue_wait", job.started_at - job.submitted_at)
        out_of_memory = False
        try:
            result = self._engine.generate(job.request, on_step=lambda p: self._on_step(job, p))
            job.succeed(self._package(job, result))
        except ServiceError as err:  # a remote engine's own explanation (replica lost, cluster busy)
            job.fail(err)
        except GenerationCancelled:
            # Cancelled by shutdown: the waiting client gets a retryable 503, not a bare "stopped".
            job.mark_cancelled(ServiceError("shutting_down", status=503) if self._stopping else None)
        except InvalidRequestError as err:  # LoraError (code "lora") too: refused before any weight changed
            key = "lora_rejected" if err.code == "lora" else "engine_rejected"
            logger.warning("%s refused by the engine: %s", job.id, err)  # full text here; the client's is redacted
            job.fail(ServiceError(key, status=400, field=err.field, detail=redact(str(err))))
        except EngineOutOfMemory as err:  # refused before running: the estimate says it cannot fit
            job.fail(ServiceError("does_not_fit", status=500, detail=redact(str(err))))
        except Exception as err:
            if is_out_of_memory(err):
                out_of_memory = True
            elif is_fatal_device_error(err):
                logger.critical("%s: the device is unusable (%s); /health/live now fails so the process restarts",
                                job.id, err)
                self._mark_device_failed(job, redact(f"{type(err).__name__}: {err}"))
            else:
                logger.exception("%s failed", job.id)
                job.fail(ServiceError("internal_error", status=500, detail=type(err).__name__))
        if out_of_memory:
            # Outside the except block: the exception's traceback no longer pins tensors.
            free_device_memory()
            job.fail(ServiceError("out_of_memory", status=500))
        self._record_outcome(job)

    def _mark_device_failed(self, job: Job, detail: str) -> None:
        """A CUDA error other than OOM poisons the context: refuse new work until a restart."""
        error = ServiceError("device_failed", status=503, detail=detail)
        self.device_failed = True
        self.unavailable_error = error
        self.engine_state = EngineState.UNAVAILABLE
        job.fail(error)
        with self._cond:
            dropped = list(self._waiting)
            self._waiting.clear()
        for waiting in dropped:
            waiting.fail(error)

    def _on_step(self, job: Job, progress: StepProgress) -> None:
        capture_preview(job, progress)
        job.report_step(progress.step, progress.total)
        if job.cancel_requested:
            raise GenerationCancelled(f"{job.id} cancelled at step {progress.step}")

    def _package(self, job: Job, result: GenerationResult) -> JobResult:
        """PNG-encode every image with its recipe and save it to the output folder."""
        started = time.perf_counter()
        request = job.request
        loras = lora_fingerprints(request.loras)
        reference = _reference_summary(request)
        # A Ray replica says where it ran; the in-process engine leaves result.replica None.
        engine_info = {**self.engine_info, "replica": result.replica} if result.replica else self.engine_info
        images = []
        for index, (image, seed) in enumerate(zip(result.images, result.seeds)):
            recipe = build_recipe(request, seed, index, engine_info, loras, reference, result.timings)
            png = encode_png(image, recipe)
            images.append(JobImage(png=png, path=self._save(job, index, seed, png), seed=seed, recipe=recipe))
        self.history.apply_retention()
        timings = dict(result.timings)
        timings["png_encode"] = time.perf_counter() - started
        timings["queue_wait"] = job.started_at - job.submitted_at
        return JobResult(images=images, seeds=list(result.seeds), timings=timings,
                         prompt_tokens=result.prompt_tokens)

    def _save(self, job: Job, index: int, seed: int, png: bytes) -> Path | None:
        folder = self.settings.output_dir / time.strftime("%Y-%m-%d")
        path = folder / f"{time.strftime('%H%M%S')}-{job.id}-{index}-{seed}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        except OSError as err:  # a full disk must not lose the image the client is waiting for
            logger.error("could not save %s: %s", path, err)
            return None
        return path

    def _record_outcome(self, job: Job) -> None:
        if job.error is not None and job.error.key in MEMORY_ERRORS:
            outcome = "out_of_memory"
        else:
            outcome = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(job.state.value, "failed")
        images = len(job.result.images) if job.result else 0
        self.metrics.job_finished(outcome, images)
        if job.result:
            for stage, seconds in job.result.timings.items():
                self.metrics.observe_stage(stage, seconds)
        if job.error is not None and outcome != "cancelled":
            self.metrics.error(job.error.key)
        logger.info("%s %s in %.2f s", job.id, outcome, (job.finished_at or 0) - (job.started_at or 0))


def _reference_summary(request: GenerationRequest) -> dict | None:
    """What the recipe records about a reference image: its size and a hash of its pixels."""
    summary = image_summary(request.reference_image)
    return None if summary is None else {**summary, "strength": request.strength}
