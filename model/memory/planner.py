"""Memory modes -> placement plans: a pure policy, testable without a GPU.

A memory mode becomes a `PlacementPlan` by a pure function of (mode, device budget, component
footprints), so tests can check the policy without a GPU; `MemoryManager` then executes the plan.

Modes:
- full: every component resident on the device.
- balanced: transformer and VAE resident; the text encoder lives on the CPU and comes to the device only
  while encoding: whole when it fits beside the transformer, else streamed one decoder layer at a time.
- low: the transformer's block projections stored in fp8 (bf16 compute), resident when that fits, else
  streamed block by block; the text encoder streamed; the VAE resident.
- auto: the first of full, balanced, low whose estimated peak for a 1024x1024 image fits the budget.

A ControlNet, loaded later for the requests that name one, joins the plan through `plan_controlnet`:
resident in full mode, and in balanced mode when a 1024x1024 image still fits beside it; streamed
block by block otherwise; in low mode streamed with its block projections in fp8 like the transformer's
(half the bytes over the bus at every step).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from model.memory.placement import ON_DEMAND, RESIDENT, STREAMED, ComponentPlan, Footprint, PlacementPlan
from model.memory.vram import REFERENCE_REQUEST, ModelDims, estimate_peak
from model.options import MEMORY_MODES


def _plan(mode: str, requested: str, budget: int | None, **components: ComponentPlan) -> PlacementPlan:
    return PlacementPlan(mode=mode, requested_mode=requested, budget_bytes=budget, components=components)


def _fits(plan: PlacementPlan, footprints: Mapping[str, Footprint], dims: ModelDims | None) -> bool:
    if plan.budget_bytes is None:
        return True
    return estimate_peak(plan, footprints, REFERENCE_REQUEST, dims).total_bytes <= plan.budget_bytes


def plan_placement(mode: str, budget_bytes: int | None, footprints: Mapping[str, Footprint],
                   dims: ModelDims | None = None, requested_mode: str | None = None) -> PlacementPlan:
    """Pure policy: the placement for `mode` given the device budget (None: unbounded, e.g. CPU).

    Where a mode has two variants, the roomier one is taken when a 1024x1024 image fits the budget with it.
    """
    requested = requested_mode or mode
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    if mode == "full":
        return _plan("full", requested, budget_bytes, text_encoder=ComponentPlan(), transformer=ComponentPlan(),
                     vae=ComponentPlan())
    if mode == "balanced":
        whole = _plan("balanced", requested, budget_bytes, text_encoder=ComponentPlan(ON_DEMAND),
                      transformer=ComponentPlan(), vae=ComponentPlan())
        if _fits(whole, footprints, dims):
            return whole
        return _plan("balanced", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                     transformer=ComponentPlan(), vae=ComponentPlan())
    if mode == "low":
        resident = _plan("low", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                         transformer=ComponentPlan(RESIDENT, fp8=True), vae=ComponentPlan())
        if _fits(resident, footprints, dims):
            return resident
        return _plan("low", requested, budget_bytes, text_encoder=ComponentPlan(STREAMED),
                     transformer=ComponentPlan(STREAMED, fp8=True), vae=ComponentPlan())
    for candidate in ("full", "balanced", "low"):
        plan = plan_placement(candidate, budget_bytes, footprints, dims, requested_mode="auto")
        if _fits(plan, footprints, dims):
            return plan
    return plan  # nothing fits a 1024x1024 image: the smallest plan; admission refuses what cannot run


def plan_controlnet(plan: PlacementPlan, footprints: Mapping[str, Footprint], dims: ModelDims | None = None,
                    name: str = "controlnet") -> PlacementPlan:
    """`plan` with the ControlNet (its footprint under `name` in `footprints`) placed as the module doc says."""
    resident = replace(plan, components={**plan.components, name: ComponentPlan()})
    if plan.mode == "full" or (plan.mode == "balanced" and _fits(resident, footprints, dims)):
        return resident
    return replace(plan, components={**plan.components, name: ComponentPlan(STREAMED, fp8=plan.mode == "low")})
