"""What the Gradio events do: every generate goes through the shared service; the rest is form plumbing."""

from __future__ import annotations

import inspect
import io
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from app.errors import ServiceError
from app.control import resolve_controlnet
from app.fields import DOOR_DEFAULTS, FORM_NUMERIC_FIELDS, FORM_TEXT_FIELDS, IMAGE_FIELDS, RESTORED_FIELDS
from app.ui.export_auth import with_api_key
from app.i18n import language_from_header, translate
from app.jobs import Job, JobState
from app.loras import check_scale, list_lora_names, resolve_loras
from app.metadata import read_recipe
from app.redaction import public_path
from app.service import EngineState, GenerationService
from app.settings import Settings
from app.ui.choices import NO_CONTROLNET, controlnet_choices
from app.ui.export import GRADIO_PARAMETERS, snippets_for
from app.ui.history_panel import HistoryPanel
from app.ui.presets import preset_choices
from app.ui.slots import (SLOT_PARAMETERS, SLOTS, filled_slots, name_field, scale_field, slot_choices,
                          slot_values, usable_recipe_loras)
from app.ui.strings import ui_text
from app.uploads import trusted_upload
from app.validation import open_uploaded_file, parse_size
from model.request import GenerationRequest, uses_cfg

POLL_SECONDS = 0.5
# Everything restore_from_png sets before the batch size and the status: the fields, then the LoRA slots.
RESTORED_OUTPUTS = RESTORED_FIELDS + SLOT_PARAMETERS
NAME_FIELDS = tuple(name_field(slot) for slot in SLOTS)
# The export panel's sources: the form as it is, or the image chosen in the history panel.
HISTORY_SOURCE = "history"
EXPORT_SOURCES = [("当前表单 / current form", "form"),
                  ("所选历史图片 / chosen history image", HISTORY_SOURCE)]


def request_language(lang: str | None, request: gr.Request | None) -> str:
    """The tab's chosen language, else the browser's Accept-Language."""
    if lang in ("en", "zh"):
        return lang
    headers = getattr(request, "headers", None) or {}
    return language_from_header(headers.get("accept-language"))


def base_url(request: gr.Request | None) -> str:
    headers = getattr(request, "headers", None) or {}
    scheme = headers.get("x-forwarded-proto", "http")
    return f"{scheme}://{headers.get('host', '127.0.0.1:7860')}"


def with_api_signature(method: Callable[..., Iterator[tuple]]) -> Callable[..., Iterator[tuple]]:
    """Give `method(self, *values)` the signature Gradio reads for the public API: one parameter per
    GRADIO_PARAMETERS entry (named and ordered by the field table), then lang, request and progress.

    Each defaults to None: gradio_client then treats an image left out (no initial value on the page) as
    optional, so a script written before a new image field existed keeps working."""
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("self", plain)]
    parameters += [inspect.Parameter(name, plain, default=None) for name in (*GRADIO_PARAMETERS, "lang")]
    parameters += [inspect.Parameter("request", plain, default=None, annotation=gr.Request),
                   inspect.Parameter("progress", plain, default=gr.Progress())]
    method.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    method.__annotations__ = {"request": gr.Request}  # Gradio finds the gr.Request parameter by its type
    return method


class UiHandlers:
    """Event functions bound to one service (the parameter names of `generate` are the public API)."""

    def __init__(self, service: GenerationService):
        self.service = service
        self.settings = service.settings

    # ---- generation -------------------------------------------------------------------------
    @with_api_signature
    def generate(self, *values: Any) -> Iterator[tuple]:
        """Submit to the shared queue, then stream position, step progress and finally the images.

        `values`: the public API parameters in GRADIO_PARAMETERS order (lora_N / lora_N_scale: LoRA slot N,
        "" or None = empty), then the tab's language, the gr.Request and the gr.Progress."""
        *form_values, lang, request, progress = values
        lang = request_language(lang, request)
        form = form_params(tuple(form_values))
        try:
            gen_request = self._build_request(form)
            owner = getattr(request, "session_hash", None)
            job = self.service.submit(gen_request, door="gradio", owner=owner, previews=True)
        except ServiceError as err:
            self.service.metrics.error(err.key)
            raise gr.Error(err.message(lang), print_exception=False) from None
        try:
            yield from self._follow(job, lang, progress)
        finally:
            if not job.done:  # the browser left or the event was cancelled: free the queue slot
                self.service.cancel(job)

    def _build_request(self, form: dict[str, Any]) -> GenerationRequest:
        # preprocess=False: images arrive as Gradio's raw FileData dicts, read only when they are uploads or our
        # own outputs (uploaded_image); the ControlNet is a name in the ControlNet folder, never a path.
        images = {field.name: uploaded_image(form[field.name], field.name, self.settings) for field in IMAGE_FIELDS}
        numbers = {field.name: _number(field.name, form[field.name], field.kind) for field in FORM_NUMERIC_FIELDS}
        texts = {field.name: str(form[field.name] or DOOR_DEFAULTS.get(field.name) or "")
                 for field in FORM_TEXT_FIELDS}
        texts["controlnet"] = resolve_controlnet(texts["controlnet"], self.settings.controlnet_dir)
        return GenerationRequest(**texts, **numbers, **images,
                                 loras=resolve_loras(lora_items(form), self.settings.lora_dir))

    def _follow(self, job: Job, lang: str, progress: gr.Progress) -> Iterator[tuple]:
        """Stream the job: queue position, then each step (with the newest live preview in the results
        gallery, where the images will appear), then the images."""
        version, shown_preview = -1, 0
        while True:
            version = job.wait_for_change(version, POLL_SECONDS)
            if job.state == JobState.QUEUED:
                ahead = self.service.jobs_ahead(job)
                progress(0.0, desc=translate("status_queued", lang, ahead=ahead))
                yield translate("status_queued", lang, ahead=ahead), gr.skip(), gr.skip(), gr.skip()
            elif job.state == JobState.RUNNING:
                total = job.total_steps or job.request.steps
                progress((job.step, total), desc=translate("status_running", lang, step=job.step, total=total),
                         unit="steps")
                preview = gr.skip()
                if job.preview is not None and job.preview_step != shown_preview:
                    shown_preview = job.preview_step
                    caption = translate("preview_caption", lang, step=shown_preview, total=total)
                    preview = [(Image.open(io.BytesIO(job.preview)), caption)]
                yield translate("status_running", lang, step=job.step, total=total), preview, gr.skip(), gr.skip()
            elif job.state == JobState.SUCCEEDED:
                yield self._final_outputs(job, lang)
                return
            elif job.state == JobState.CANCELLED:
                yield job.error.message(lang), gr.skip(), gr.skip(), gr.skip()
                return
            else:
                raise gr.Error(job.error.message(lang) if job.error else "failed", print_exception=False)

    def _final_outputs(self, job: Job, lang: str) -> tuple:
        result = job.result
        gallery = [(str(img.path) if img.path else Image.open(io.BytesIO(img.png), formats=["PNG"]), f"seed {img.seed}")
                   for img in result.images]
        seconds = (job.finished_at or 0) - (job.started_at or 0)
        status = translate("status_done", lang, seconds=seconds, seeds=", ".join(map(str, result.seeds)))
        details = {"seeds": result.seeds, "prompt_tokens": result.prompt_tokens,
                   "timings": {k: round(v, 3) for k, v in result.timings.items()},
                   # Relative to the output folder: clients never see the server's absolute paths.
                   "files": [str(img.path.relative_to(self.settings.output_dir)) for img in result.images if img.path],
                   "job": job.summary()}
        recipe = dict(result.images[0].recipe)
        recipe["batch_size"] = job.request.batch_size
        recipe["seed"] = job.request.seed
        last = {"recipe": recipe, "images": gallery, "seeds": result.seeds}
        return status, gallery, details, last

    def stop(self, request: gr.Request) -> None:
        """Stop button: cancel this tab's jobs in our queue; their generate events then end themselves."""
        owner = getattr(request, "session_hash", None)
        if owner:
            self.service.cancel_owned_by(owner)

    # ---- form helpers -----------------------------------------------------------------------
    def detect_language(self, request: gr.Request) -> tuple[str, str]:
        lang = request_language(None, request)
        return lang, lang

    def count_tokens(self, prompt: str, lang: str | None, request: gr.Request) -> str:
        """Live "Tokens: n / limit" under the prompt (the limit below which prompts are never cut)."""
        lang = request_language(lang, request)
        limit = self.service.prompt_token_limit
        try:
            count = self.service.count_tokens(prompt[: self.settings.max_prompt_chars]) if prompt else 0
        except ServiceError:  # model not loaded (yet)
            return ui_text("tokens_unknown", lang)
        return ui_text("tokens_over" if count > limit else "tokens", lang, count=count, limit=limit)

    @staticmethod
    def toggle_negative(guidance: float) -> dict:
        return gr.update(interactive=uses_cfg(float(guidance or 0)))

    @staticmethod
    def reuse_seed(last: dict | None, current: int) -> int:
        """The last run's seed (the batch's first; _final_outputs keeps it in the run's recipe)."""
        return int(last["recipe"]["seed"]) if last else current

    def size_class_changed(self, size_class: str) -> tuple[dict, Any, Any]:
        """A new class offers its aspect ratios and applies the first (square) one."""
        choices = preset_choices(size_class, self.settings.max_size)
        if not choices:
            return gr.update(choices=[], value=None), gr.skip(), gr.skip()
        width, height = parse_size(choices[0][1])
        return gr.update(choices=choices, value=choices[0][1]), width, height

    @staticmethod
    def preset_changed(preset: str | None, width: int, height: int) -> tuple[int, int]:
        if not preset:
            return width, height
        return parse_size(preset)

    def restore_from_png(self, path: str | None, lang: str | None, request: gr.Request) -> list:
        """A dropped PNG's recipe back into the form (fields it lacks stay as they are), LoRA slots included."""
        lang = request_language(lang, request)
        skip_all = [gr.skip()] * (len(RESTORED_OUTPUTS) + 1)
        if not path:
            return skip_all + [gr.skip()]
        try:
            # Uploads or our own outputs only (app.uploads; history items are restored through here too), and
            # PNG only: recipes live in PNG text chunks.
            with Image.open(trusted_upload(path, "recipe_drop", self.settings.output_dir), formats=["PNG"]) as image:
                recipe = read_recipe(image)
        except ServiceError as err:
            return skip_all + [err.message(lang)]
        except (OSError, ValueError, Image.DecompressionBombError):
            recipe = None
        if not recipe:
            return skip_all + [translate("png_without_recipe", lang)]
        values = [recipe[name] if recipe.get(name) is not None else gr.skip() for name in RESTORED_FIELDS]
        slots, notes = self._restored_slots(recipe.get("loras"), lang)
        if "controlnet" in recipe:  # our recipes record None when no ControlNet was used: back to "none"
            net, note = self._restored_controlnet(recipe["controlnet"], lang)
            values[RESTORED_FIELDS.index("controlnet")] = net
            notes += [note] if note else []
        status = "\n\n".join([translate("recipe_restored", lang, seed=recipe.get("seed", "-"))]
                              + [f"⚠️ {note}" for note in notes])
        # One image of a batch is reproduced by its own seed with batch size 1.
        return values + slots + [1, status]

    def _restored_slots(self, recorded: Any, lang: str) -> tuple[list, list[str]]:
        """Slot values for a recipe's LoRA list (skips when the recipe has none), and warnings to show."""
        if not isinstance(recorded, list):  # not our recipe (A1111 text): leave the slots alone
            return [gr.skip()] * len(SLOT_PARAMETERS), []
        items = [item for item in recorded if isinstance(item, dict)]
        kept, notes = usable_recipe_loras(items, self.settings.lora_dir)
        values = slot_values(kept)
        choices = slot_choices(list_lora_names(self.settings.lora_dir))
        # New choices with the value: the folder may have gained the file since the page loaded.
        updates = [gr.update(choices=choices, value=values[field]) if field in NAME_FIELDS else values[field]
                   for field in SLOT_PARAMETERS]
        return updates, [translate(key, lang, **params) for key, params in notes]

    def _restored_controlnet(self, recorded: Any, lang: str) -> tuple[dict, str | None]:
        """The ControlNet dropdown for a recipe's ControlNet name (none when it used none or the file is gone),
        and a warning when it is gone."""
        # New choices with the value: the folder may have gained the file since the page loaded.
        choices = controlnet_choices(self.settings.controlnet_dir)
        if not recorded:
            return gr.update(choices=choices, value=NO_CONTROLNET), None
        if str(recorded) not in {value for _, value in choices}:
            note = translate("recipe_controlnet_missing", lang, name=str(recorded),
                             folder=public_path(self.settings.controlnet_dir))
            return gr.update(choices=choices, value=NO_CONTROLNET), note
        return gr.update(choices=choices, value=str(recorded)), None

    def lora_choices(self) -> tuple[dict, ...]:
        """Every slot's dropdown offers the LoRA folder as it is now (page load)."""
        choices = slot_choices(list_lora_names(self.settings.lora_dir))
        return tuple(gr.update(choices=choices) for _ in NAME_FIELDS)

    # ---- export -----------------------------------------------------------------------------
    def export(self, source: str | None, chosen: str | None, lang: str | None, request: gr.Request,
               *form: Any) -> tuple[str, str, str, str]:
        """Snippets for the current form, or (source "history") for the image chosen in the history."""
        params = HistoryPanel(self.service.history).recipe_of(chosen) if source == HISTORY_SOURCE else None
        snippets = snippets_for(params or form_params(form), base_url(request))
        if self.settings.api_key:  # security hook: the snippets read the key from ZIMAGE_API_KEY
            snippets = with_api_key(snippets)
        return snippets.python, snippets.curl_gradio, snippets.curl_rest, snippets.openai

    def banner(self) -> tuple[dict, dict]:
        """Weights/loading banner; the polling timer stops once the engine has settled."""
        state = self.service.engine_state
        if state == EngineState.READY:
            return gr.update(value="", visible=False), gr.Timer(active=False)
        if state == EngineState.UNAVAILABLE and self.service.unavailable_error:
            err = self.service.unavailable_error
            text = f"⚠️ **{err.message('zh')}**\n\n⚠️ **{err.message('en')}**"
            return gr.update(value=text, visible=True), gr.Timer(active=False)
        text = f"{ui_text('loading_banner', 'zh')}\n\n{ui_text('loading_banner', 'en')}"
        return gr.update(value=text, visible=True), gr.Timer(active=True)


def uploaded_image(value: Any, field: str, settings: Settings) -> Image.Image | None:
    """A form's image (a path, or Gradio's raw FileData dict) opened under the upload limits; None when empty.
    Security hook: only Gradio's own uploads and this server's outputs are opened (app.uploads; app.security
    already refused any other path in the HTTP body)."""
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    return open_uploaded_file(str(trusted_upload(path, field, settings.output_dir)), settings, field)


def _number(field: str, value: Any, kind: type) -> Any:
    """A raw API value as int/float, or a clear error naming the field (events skip Gradio's preprocess)."""
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ServiceError("invalid_value", field=field, detail=f"expected a number, got {value!r}") from None


def lora_items(form: dict[str, Any]) -> list[dict[str, Any]]:
    """The filled LoRA slots as [{"name", "scale"}], each strength checked under its slot's parameter name."""
    items = []
    for slot, name, scale in filled_slots(form):
        field = scale_field(slot)
        items.append({"name": name, "scale": check_scale(field, _number(field, scale, float))})
    return items


def form_params(form: tuple) -> dict[str, Any]:
    """Form values (in GRADIO_PARAMETERS order) by name."""
    return dict(zip(GRADIO_PARAMETERS, form))
