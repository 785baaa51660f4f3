"""The app <-> engine contract (model.protocol.EngineProtocol): the real engine and the test double keep it."""

from __future__ import annotations

import inspect

import pytest

from fake_engine import FakeEngine
from model.protocol import DESCRIBE_KEYS, EngineProtocol
from model.request import ENGINE_LIMITS, EngineLimits

MEMBERS = ("generate", "count_tokens", "describe", "warmup", "limits")


def _members(cls: type) -> dict[str, object]:
    return {name: inspect.getattr_static(cls, name) for name in MEMBERS}


def _parameters(member: object) -> list[str]:
    return list(inspect.signature(member).parameters)


def test_protocol_lists_the_members_the_app_uses():
    protocol = {name for name in dir(EngineProtocol) if not name.startswith("_")}
    assert protocol == set(MEMBERS)


@pytest.mark.parametrize("implementation", ["fake", "engine", "slowed", "ray"])
def test_engines_have_every_member_with_the_protocols_signature(implementation: str):
    if implementation == "engine":
        from model.engine import Engine as cls  # torch loads here, not while collecting
    elif implementation == "slowed":
        from app.engine_loader import SlowedSteps as cls  # the engine with debug_step_delay
    elif implementation == "ray":
        from app.serving.ray_engine import RayEngine as cls
    else:
        cls = FakeEngine
    expected, actual = _members(EngineProtocol), _members(cls)
    for name in MEMBERS:
        if name == "limits":
            assert isinstance(actual[name], property), f"{cls.__name__}.limits must be a property"
            continue
        assert callable(actual[name]), f"{cls.__name__}.{name}"
        assert _parameters(actual[name]) == _parameters(expected[name]), f"{cls.__name__}.{name}"


def test_fake_engine_is_an_engine_protocol_and_describes_like_the_engine():
    engine = FakeEngine()
    assert isinstance(engine, EngineProtocol)
    assert set(DESCRIBE_KEYS) <= set(engine.describe())
    assert isinstance(engine.limits, EngineLimits) and engine.limits == ENGINE_LIMITS


def test_real_engine_describes_every_key_and_fills_its_limits(tiny_model_dir):
    import torch

    from model.engine import Engine

    engine = Engine.from_pretrained(tiny_model_dir / "comfy", device="cpu", dtype=torch.float32)
    assert isinstance(engine, EngineProtocol)
    assert set(DESCRIBE_KEYS) <= set(engine.describe())
    limits = engine.limits
    assert limits.max_side == engine.max_side() and limits.max_prompt_tokens > 0
    assert limits.steps == ENGINE_LIMITS.steps
