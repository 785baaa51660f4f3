"""The sampler dropdown: its choices and the line that says what each sampler costs, from the catalogue."""

from __future__ import annotations

from typing import Mapping

from model.sampling.catalog import SAMPLERS, SamplerInfo


def sampler_choices(samplers: Mapping[str, SamplerInfo] = SAMPLERS) -> list[tuple[str, str]]:
    """(label, name) dropdown choices; a sampler that costs more than one transformer call per step says so."""
    return [(info.label if info.calls_per_step == 1 else f"{info.label} (×{info.calls_per_step})", name)
            for name, info in samplers.items()]


def sampler_cost_note(lang: str, samplers: Mapping[str, SamplerInfo] = SAMPLERS) -> str:
    """The dropdown's help line: which samplers cost more transformer calls per step (or that none does)."""
    costly = [info for info in samplers.values() if info.calls_per_step > 1]
    if not costly:
        return ("每个采样器每步都只调用 1 次 Transformer（步数 = 调用次数）。" if lang == "zh"
                else "Every sampler costs 1 transformer call per step (steps = calls).")
    listed = ", ".join(f"{info.label} ×{info.calls_per_step}" for info in costly)
    return (f"每步调用次数更多（时间成倍增加）：{listed}；其余每步 1 次。" if lang == "zh"
            else f"Costs more transformer calls per step (and time): {listed}; the others 1 per step.")
