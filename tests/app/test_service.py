"""The generation service with a fake engine: order, positions, cancel, failures, OOM, shutdown, no weights."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from app.engine_loader import engine_factory
from app.errors import ServiceError
from app.jobs import JobState
from app.metadata import read_recipe
from app.service import EngineState, GenerationService
from app_helpers import make_settings
from fake_engine import FakeEngine
from model.errors import OutOfMemoryError as EngineOutOfMemory
from model.request import GenerationRequest


def started_service(tmp_path: Path, engine: FakeEngine, **changes) -> GenerationService:
    service = GenerationService(make_settings(tmp_path, **changes), lambda: engine)
    service.start()
    deadline = time.monotonic() + 10
    while service.engine_state != EngineState.READY:
        assert time.monotonic() < deadline, service.unavailable_error
        time.sleep(0.01)
    return service


def small_request(**changes) -> GenerationRequest:
    values = dict(prompt="a red fox", width=128, height=128, steps=3, seed=7)
    values.update(changes)
    return GenerationRequest(**values)


@pytest.fixture
def service(tmp_path: Path):
    service = started_service(tmp_path, FakeEngine(step_seconds=0.02), queue_size=4)
    yield service
    service.shutdown(1.0)


def test_jobs_run_one_at_a_time_in_submit_order_with_positions(service: GenerationService):
    jobs = [service.submit(small_request(seed=i), door="test") for i in range(4)]
    for job in jobs:
        assert job.wait(30)
    assert [job.state for job in jobs] == [JobState.SUCCEEDED] * 4
    starts = [job.started_at for job in jobs]
    assert starts == sorted(starts)
    for earlier, later in zip(jobs, jobs[1:]):
        assert earlier.finished_at <= later.started_at
    # Each job was told how many jobs were ahead of it (the running one included).
    for job in jobs:
        ahead = sum(1 for other in jobs if other.submitted_at < job.submitted_at < other.finished_at)
        assert job.position_at_submit == ahead


def test_overflow_is_refused_with_queue_full(service: GenerationService):
    blocker = service.submit(small_request(steps=50), door="test")
    while blocker.state != JobState.RUNNING:
        time.sleep(0.01)
    waiting = [service.submit(small_request(), door="test") for _ in range(service.settings.queue_size)]
    with pytest.raises(ServiceError) as caught:
        service.submit(small_request(), door="test")
    assert caught.value.status == 429 and caught.value.key == "queue_full"
    assert "队列已满" in caught.value.message("zh")
    assert [service.jobs_ahead(job) for job in waiting] == [1, 2, 3, 4]
    service.cancel(blocker)
    assert all(job.wait(30) for job in waiting)


def test_seed_minus_one_gets_a_random_seed_and_images_carry_recipes(service: GenerationService):
    job = service.submit(small_request(seed=-1, batch_size=2), door="test")
    assert job.wait(30) and job.state == JobState.SUCCEEDED
    assert job.request.seed >= 0
    assert job.result.seeds == [job.request.seed, job.request.seed + 1]
    for image in job.result.images:
        assert image.path is not None and image.path.read_bytes() == image.png
        with Image.open(image.path) as png:
            recipe = read_recipe(png)
        assert recipe["seed"] == image.seed and recipe["prompt"] == "a red fox"


def test_cancel_running_and_queued_jobs(service: GenerationService):
    running = service.submit(small_request(steps=50), door="test", owner="tab-1")
    queued = service.submit(small_request(), door="test", owner="tab-1")
    other = service.submit(small_request(), door="test", owner="tab-2")
    while running.step < 2:
        time.sleep(0.01)
    assert service.cancel_owned_by("tab-1") == 2
    assert running.wait(10) and queued.wait(10)
    assert running.state == JobState.CANCELLED and queued.state == JobState.CANCELLED
    assert running.step < 50
    assert other.wait(30) and other.state == JobState.SUCCEEDED


def test_a_failing_job_does_not_kill_the_worker(service: GenerationService):
    bad = service.submit(small_request(prompt="raise-runtime-error"), door="test")
    assert bad.wait(30) and bad.state == JobState.FAILED
    assert bad.error.status == 500 and "RuntimeError" in bad.error.message("en")
    good = service.submit(small_request(), door="test")
    assert good.wait(30) and good.state == JobState.SUCCEEDED


class OomEngine(FakeEngine):
    """Raises torch's CUDA out-of-memory error for large requests, the engine's own for huge batches."""

    def generate(self, request, on_step=None):
        if request.batch_size > 2:
            raise EngineOutOfMemory("estimated peak 30.1 GiB exceeds the 15.6 GiB free")
        if request.width > 256:
            import torch  # only here: the app suite collects without torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().generate(request, on_step)


def test_out_of_memory_is_a_clear_message_and_the_next_job_runs(tmp_path: Path):
    service = started_service(tmp_path, OomEngine())
    try:
        big = service.submit(small_request(width=512, height=512), door="test")
        assert big.wait(30) and big.state == JobState.FAILED
        assert big.error.key == "out_of_memory" and "显存不足" in big.error.message("zh")
        small = service.submit(small_request(), door="test")
        assert small.wait(30) and small.state == JobState.SUCCEEDED
        refused = service.submit(small_request(batch_size=4), door="test")
        assert refused.wait(30) and refused.error.key == "does_not_fit" and "30.1 GiB" in refused.error.message("en")
        assert 'zimage_jobs_total{outcome="out_of_memory"} 2' in service.metrics.render()
    finally:
        service.shutdown(1.0)


class BrokenDeviceEngine(FakeEngine):
    """Fails like a CUDA context after an illegal memory access."""

    def generate(self, request, on_step=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_fatal_device_error_marks_the_service_for_restart(tmp_path: Path):
    service = started_service(tmp_path, BrokenDeviceEngine())
    try:
        job = service.submit(small_request(), door="test")
        assert job.wait(30) and job.state == JobState.FAILED and job.error.key == "device_failed"
        assert service.device_failed and not service.ready
        with pytest.raises(ServiceError) as caught:
            service.submit(small_request(), door="test")
        assert caught.value.status == 503 and "illegal memory access" in caught.value.message("en")
    finally:
        service.shutdown(1.0)


def test_bad_requests_are_refused_before_queueing(service: GenerationService):
    cases = [(dict(prompt="  "), "prompt_empty"), (dict(width=130), "size_out_of_range"),
             (dict(height=4096), "size_out_of_range"), (dict(steps=0), "out_of_range"),
             (dict(batch_size=9), "out_of_range"), (dict(guidance=-1.0), "out_of_range")]
    for changes, key in cases:
        with pytest.raises(ServiceError) as caught:
            service.submit(small_request(**changes), door="test")
        assert caught.value.key == key, changes
    with pytest.raises(ServiceError) as caught:
        service.submit(small_request(prompt="word " * 1100), door="test")
    assert caught.value.key == "prompt_too_long" and "1024" in caught.value.message("en")


def test_shutdown_cancels_a_long_job_within_the_bound(tmp_path: Path):
    service = started_service(tmp_path, FakeEngine(step_seconds=0.05))
    job = service.submit(small_request(steps=50), door="test")
    queued = service.submit(small_request(), door="test")
    while job.step < 1:
        time.sleep(0.01)
    started = time.monotonic()
    service.shutdown(grace_seconds=0.2)
    assert job.state == JobState.CANCELLED and queued.state == JobState.FAILED
    assert queued.error.key == "shutting_down" and job.error.key == "shutting_down" and job.error.status == 503
    assert time.monotonic() - started < 5.0
    with pytest.raises(ServiceError) as caught:
        service.submit(small_request(), door="test")
    assert caught.value.status == 503


def test_missing_weights_leave_the_service_up_with_an_explanation(tmp_path: Path):
    settings = make_settings(tmp_path, weights_dir=tmp_path / "no-weights-here")
    service = GenerationService(settings, engine_factory(settings))
    service.start()
    done = threading.Event()
    while service.engine_state == EngineState.LOADING and not done.wait(0.01):
        pass
    try:
        assert service.engine_state == EngineState.UNAVAILABLE and not service.ready
        with pytest.raises(ServiceError) as caught:
            service.submit(small_request(), door="test")
        err = caught.value
        assert err.status == 503 and err.key == "weights_missing"
        # The folder is named, but never by its absolute path (issue 11: no server paths to clients).
        assert "no-weights-here" in err.message("en")
        assert str(tmp_path) not in err.message("en") and str(tmp_path) not in err.message("zh")
        assert "scripts/download_weights.py" in err.message("en") and "未找到模型权重" in err.message("zh")
    finally:
        service.shutdown(1.0)


def test_uploads_open_only_listed_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An EPS upload never reaches Pillow's EPS plugin (which would run Ghostscript)."""
    from PIL import EpsImagePlugin

    from app.validation import decode_image_bytes

    calls = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                        lambda self: (calls.append(True), original(self))[1])
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nshowpage\n"
    with pytest.raises(ServiceError) as caught:
        decode_image_bytes(eps, make_settings(tmp_path))
    assert caught.value.key == "not_an_image" and calls == []


def test_negative_prompt_is_checked_under_its_own_name(service: GenerationService):
    too_long = "x" * (service.settings.max_prompt_chars + 1)
    with pytest.raises(ServiceError) as caught:
        service.submit(small_request(negative_prompt=too_long), door="rest")
    assert caught.value.key == "negative_prompt_too_many_chars" and caught.value.field == "negative_prompt"
    words = "blur " * service.settings.max_prompt_tokens
    with pytest.raises(ServiceError) as caught:
        service.submit(small_request(negative_prompt=words, guidance=2.0), door="rest")
    assert caught.value.key == "negative_prompt_too_long" and caught.value.field == "negative_prompt"
    service.submit(small_request(negative_prompt=words), door="rest")  # without CFG it is not encoded


def test_service_refuses_prompts_beyond_the_checkpoints_capacity(tmp_path: Path):
    class SmallRope(FakeEngine):
        @property
        def limits(self):
            return dataclasses.replace(super().limits, max_prompt_tokens=16)

    service = started_service(tmp_path, SmallRope())
    try:
        with pytest.raises(ServiceError) as caught:
            service.submit(small_request(prompt="word " * 20), door="rest")
        assert caught.value.key == "prompt_too_long" and caught.value.params["limit"] == 16
        assert service.prompt_token_limit == 16
    finally:
        service.shutdown(1.0)


def test_warmup_runs_at_the_configured_sizes(tmp_path: Path):
    engine = FakeEngine()
    service = started_service(tmp_path, engine, warmup=True, warmup_sizes="512x512,256x384")
    try:
        assert engine.warmed_up and engine.warmup_sizes == ((512, 512), (256, 384))
    finally:
        service.shutdown(1.0)


def test_the_debug_step_delay_is_not_slept_by_the_service(tmp_path: Path):
    """The knob slows the engine where it runs (app.engine_loader.SlowedSteps, in this process or in a Ray
    replica); the service sleeping too would slow a Ray job twice. An hour a step here: only a service that
    sleeps misses the deadline."""
    service = started_service(tmp_path, FakeEngine(), debug_step_delay=3600.0)
    try:
        job = service.submit(small_request(steps=2), door="test")
        assert job.wait(60) and job.state == JobState.SUCCEEDED
    finally:
        service.shutdown(1.0)
