"""What a replica streams back for one job: step events, then one final event (result, engine error, failure).

Plain tuples of picklable values, so the stream needs nothing but Ray's own serialisation.
"""

from __future__ import annotations

from typing import Any

STEP = "step"  # (STEP, StepProgress without its preview callable, preview JPEG bytes or None)
RESULT = "result"  # (RESULT, GenerationResult with its replica identity)
ENGINE_ERROR = "engine_error"  # (ENGINE_ERROR, a model.errors exception): re-raised as it is by the caller
FAILED = "failed"  # (FAILED, ServiceError key, detail): the replica's own explanation

Event = tuple[Any, ...]


def is_final(event: Event) -> bool:
    return event[0] != STEP
