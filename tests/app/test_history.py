"""The history read from the output folder: newest first, paged, recipes, delete by issued id only,
retention after each save, and a restart that finds the images again."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
from PIL import Image

from app.history import History
from app.metadata import build_recipe, encode_png
from app.ui.handlers import UiHandlers
from app.ui.history_panel import HistoryPanel
from app_helpers import make_settings
from fake_engine import FakeEngine
from live_server import start_server
from model.request import GenerationRequest
from test_service import small_request, started_service


def write_png(folder: Path, name: str, seed: int, age_seconds: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    recipe = build_recipe(GenerationRequest(prompt=f"image {seed}", seed=seed), seed, 0, {}, [], None, {})
    path.write_bytes(encode_png(Image.new("RGB", (8, 8)), recipe))
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_newest_first_paged_with_each_recipe(tmp_path: Path):
    for i in range(5):
        write_png(tmp_path / "2026-01-0{}".format(i % 2 + 1), f"{i}.png", seed=i, age_seconds=100 - i)
    (tmp_path / "notes.txt").write_text("not an image")
    history = History(tmp_path)
    first = history.page(0, size=2)
    assert (first.page, first.pages, first.total) == (0, 3, 5)
    assert [item.recipe()["seed"] for item in first.items] == [4, 3]
    last = history.page(9, size=2)  # past the end: the last page
    assert last.page == 2 and [item.recipe()["seed"] for item in last.items] == [0]


def test_delete_takes_only_an_issued_id_and_never_leaves_the_folder(tmp_path: Path):
    outputs, outside = tmp_path / "outputs", tmp_path / "secret"
    kept = write_png(outputs / "day", "a.png", seed=1)
    victim = write_png(outside, "b.png", seed=2)
    (outputs / "day" / "link.png").symlink_to(victim)  # a link out of the folder is not an item
    history = History(outputs)
    assert [item.path for item in history.items()] == [kept]
    for attempt in ("../secret/b.png", str(victim), "day/a.png", str(kept), "", None, history.item_id(kept) + "0"):
        assert history.delete(attempt) is False
    assert victim.exists() and kept.exists()
    assert history.delete(history.item_id(kept)) is True
    assert not kept.exists() and not (outputs / "day" / "a.png").exists() and victim.exists()


def test_retention_keeps_the_newest_images_and_drops_old_ones(tmp_path: Path):
    paths = [write_png(tmp_path / "d", f"{i}.png", seed=i, age_seconds=(10 - i) * 86400) for i in range(10)]
    assert History(tmp_path, max_images=6).apply_retention() == 4
    assert [p.exists() for p in paths] == [False] * 4 + [True] * 6
    assert History(tmp_path, max_days=2.5).apply_retention() == 4  # ages 6..3 days go, 2 and 1 stay
    assert [p.exists() for p in paths] == [False] * 8 + [True] * 2
    assert History(tmp_path).apply_retention() == 0  # no limits: nothing is deleted


def test_the_service_applies_retention_after_each_save(tmp_path: Path):
    service = started_service(tmp_path, FakeEngine(), history_max_images=3)
    try:
        for job in range(5):
            assert service.submit(small_request(seed=10 * job, batch_size=2), door="test").wait(30)
    finally:
        service.shutdown(1.0)
    items = History(service.settings.output_dir).items()
    assert [item.recipe()["seed"] for item in items] == [41, 40, 31]  # the newest three, of the last two jobs


def test_history_survives_a_restart(tmp_path: Path):
    settings = make_settings(tmp_path)
    first = start_server(settings, FakeEngine)
    try:
        first.wait_ready()
        response = httpx.post(first.url + "/v1/images/generations",
                              json={"prompt": "before the restart", "size": "128x128", "steps": 2, "seed": 808},
                              timeout=60)
        assert response.status_code == 200
    finally:
        first.stop()
    second = start_server(settings, FakeEngine)
    try:
        second.wait_ready()
        gallery, ids, page, info = HistoryPanel(second.service.history).show(0, "en")
        assert len(ids) == 1 and page == 0 and info == "Page 1/1 · 1 images"
        path, caption = gallery[0]
        assert Path(path).is_relative_to(settings.output_dir.resolve())
        assert caption == "seed 808 · before the restart"
    finally:
        second.stop()


def test_history_item_exports_restores_and_serves_as_reference(tmp_path: Path):
    write_png(tmp_path / "outputs" / "d", "old.png", seed=4242)
    handlers = UiHandlers(started_service(tmp_path, FakeEngine()))
    try:
        panel = HistoryPanel(handlers.service.history)
        _, ids, _, _ = panel.show(0, "en")
        chosen, recipe, source = panel.select(SimpleNamespace(index=0), ids)
        assert chosen == ids[0] and recipe["seed"] == 4242 and source == "history"
        request = SimpleNamespace(headers={"host": "127.0.0.1:7860"}, session_hash="s")
        python, *_ = handlers.export(source, chosen, "en", request, *([None] * 30))
        assert "seed=4242," in python and "batch_size=1," in python and "'image 4242'" in python
        assert panel.as_reference(chosen).endswith("old.png")
        assert not isinstance(panel.as_reference("../../etc/passwd"), str)  # not an id: the form stays
        deleted = panel.delete(chosen, 0, "en")
        assert deleted[1] == [] and "deleted" in deleted[-1]
    finally:
        handlers.service.shutdown(1.0)
