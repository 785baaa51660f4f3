"""The engine contract every consumer relies on (the app's service, its test double): typed, torch-free."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from model.request import EngineLimits, GenerationRequest, GenerationResult, StepCallback


@runtime_checkable
class EngineProtocol(Protocol):
    """What model.engine.Engine offers the app. `describe()` keys: layout, weights, dtype, device,
    attention_backend, memory_mode, version (PNG recipes record them)."""

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """Images for `request`; raises InvalidRequestError, GenerationCancelled, OutOfMemoryError."""
        ...

    def count_tokens(self, prompt: str) -> int:
        """Tokens of `prompt` with the chat template, before truncation."""
        ...

    def describe(self) -> dict[str, Any]:
        ...

    def warmup(self, sizes: Sequence[tuple[int, int]] = ()) -> None:
        """Tiny generations before serving; with `sizes` ((width, height)), compiled steps are ready for them."""
        ...

    @property
    def limits(self) -> EngineLimits:
        """The ranges this engine honours, with the checkpoint's max_side and max_prompt_tokens filled in."""
        ...


# describe() keys every engine reports (the recipe's "model" record).
DESCRIBE_KEYS = ("layout", "weights", "dtype", "device", "attention_backend", "memory_mode", "version")
