"""Z-Image-Turbo-Fun-Controlnet-Union (alibaba-pai, trained with VideoX-Fun): the ControlNet and its branch.

A ControlNet is a stack of Z-Image blocks over the VAE latents of a control image. Block 0 adds the
main transformer's stream to its input (`before_proj(c) + x`), every block emits a hint `after_proj(c)`,
and the hints (x control_scale) are added to the main stream right after the layers they belong to.
Attribute names equal the published file's keys (and diffusers' ZImageControlNetModel).

Versions (VideoX-Fun configs; `ControlNetLayout` is read from a file by model.loading.controlnet):
- 1.0: 16 input channels (the control latents). `control_noise_refiner` holds two plain Z-Image blocks
  that refine the control tokens; hints go only into the main layers (every 5th of 30).
- 2.1 (also 2.1-lite, 2.1-8steps, Tile 2.1): 33 input channels (16 control latents, 1 keep-mask,
  16 latents of the masked reference). `control_noise_refiner` holds control blocks whose hints go
  into the main transformer's noise refiner; the control layers then feed every 2nd main layer
  (lite: every 10th).
- 2.0: like 2.1, but its refiner stage runs the control layers themselves (the training-code typo
  VideoX-Fun kept for these weights); the file's refiner blocks are unused.

Semantics followed: VideoX-Fun's (and ComfyUI's): the refiner hints are added to the *main*
transformer's noise-refiner stream, which is how the 2.x weights were trained. diffusers 0.42.1 adds
them only to the ControlNet's own re-run of the noise refiner, so its main transformer never sees
them; for 1.0 (no refiner hints) both agree. Unlike diffusers we do not re-run the shared
refiners: the branch reads the main transformer's own streams through the `ControlHints` hook of
model.network.transformer, which gives the same tensors (block 0 is the only reader of the stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.network.config import TransformerConfig
from model.network.transformer import TransformerBlock, ZImageTransformer, _pad_rows, _replace_pad_rows, patchify

CONTROL_CHANNELS = 16  # VAE latents of the control image
INPAINT_CHANNELS = 33  # 2.x: control latents, keep-mask, masked-reference latents
VERSIONS = ("1.0", "2.0", "2.1")
# Control-layer counts of the published files -> their names (the layer count is all that tells lite apart).
_PUBLISHED = {("1.0", 6): "1.0", ("2.0", 15): "2.0", ("2.1", 15): "2.1", ("2.1", 3): "2.1-lite"}


@dataclass(frozen=True)
class ControlNetLayout:
    """What a ControlNet file holds and where its hints go in the main transformer."""

    version: str  # one of VERSIONS
    in_channels: int  # CONTROL_CHANNELS (1.0) or INPAINT_CHANNELS (2.x)
    n_layers: int  # control layers
    n_refiner_layers: int  # blocks in `control_noise_refiner` that are used (0 for 2.0)
    layer_places: tuple[int, ...]  # main layer after which each control layer's hint is added
    refiner_places: tuple[int, ...]  # noise-refiner layer after which each refiner hint is added (2.x)

    @property
    def label(self) -> str:
        """'1.0', '2.0', '2.1', '2.1-lite' for the published files; the layer count for others."""
        plural = "" if self.n_layers == 1 else "s"
        return _PUBLISHED.get((self.version, self.n_layers), f"{self.version} ({self.n_layers} control layer{plural})")

    @property
    def takes_mask(self) -> bool:
        """2.x: the inputs carry a keep-mask and the masked reference (ControlNet inpainting)."""
        return self.in_channels == INPAINT_CHANNELS


class ControlBlock(TransformerBlock):
    """A modulated Z-Image block that emits a hint; the first block of a stack also reads the main stream."""

    def __init__(self, config: TransformerConfig, first: bool):
        super().__init__(config, modulation=True)
        if first:
            self.before_proj = nn.Linear(config.dim, config.dim)
        self.after_proj = nn.Linear(config.dim, config.dim)

    def forward(self, c: torch.Tensor, stream: torch.Tensor, rope: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor | None, adaln: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next control state, hint); `stream` is read by the first block only. One forward per block,
        so block streaming (model.memory.streaming) brings the projections with the rest of it."""
        if hasattr(self, "before_proj"):
            c = self.before_proj(c) + stream
        c = super().forward(c, rope, mask, adaln)
        return c, self.after_proj(c)


class ZImageControlNet(nn.Module):
    """The ControlNet weights of one file; `branch()` prepares it for one request."""

    def __init__(self, config: TransformerConfig, layout: ControlNetLayout):
        super().__init__()
        self.config = config
        self.layout = layout
        self.control_all_x_embedder = nn.ModuleDict({
            f"{p}-{f}": nn.Linear(f * p * p * layout.in_channels, config.dim, bias=True)
            for p, f in zip(config.all_patch_size, config.all_f_patch_size)})
        self.control_layers = nn.ModuleList([ControlBlock(config, i == 0) for i in range(layout.n_layers)])
        if layout.version == "1.0":
            self.control_noise_refiner = nn.ModuleList(
                [TransformerBlock(config, True) for _ in range(layout.n_refiner_layers)])
        elif layout.version == "2.1":
            self.control_noise_refiner = nn.ModuleList(
                [ControlBlock(config, i == 0) for i in range(layout.n_refiner_layers)])

    @property
    def dtype(self) -> torch.dtype:
        return self.control_layers[0].after_proj.weight.dtype

    @property
    def hint_count(self) -> int:
        """Hints one transformer call holds at once (the memory estimate counts them)."""
        return max(self.layout.n_layers, len(self.layout.refiner_places))

    def branch(self, transformer: ZImageTransformer, control_latents: torch.Tensor, scale: float,
               patch_size: int = 2, f_patch_size: int = 1) -> "ControlBranch":
        """A ControlBranch for `control_latents` (in_channels, F, H, W) at `scale`, to pass to the transformer."""
        if control_latents.shape[0] != self.layout.in_channels:
            raise ValueError(f"control latents have {control_latents.shape[0]} channels, this ControlNet takes "
                             f"{self.layout.in_channels}")
        device = transformer.x_pad_token.device
        tokens, _grid = patchify(control_latents.to(device=device, dtype=self.dtype), patch_size, f_patch_size)
        embedded = self.control_all_x_embedder[f"{patch_size}-{f_patch_size}"](_pad_rows(tokens))
        # Pad rows get the main model's image pad token, as the image tokens they sit beside do.
        embedded = _replace_pad_rows(embedded, len(tokens), transformer.x_pad_token)
        return ControlBranch(self, embedded.unsqueeze(0), scale)


class ControlBranch:
    """The ControlNet's part of one transformer call (model.network.transformer.ControlHints).

    The transformer calls `refiner_hints` before its noise refiner and `layer_hints` before its main
    layers, in that order, once per forward; the control state passes from the first to the second.
    The control tokens are embedded once per request and broadcast over the batch (CFG included).
    """

    def __init__(self, net: ZImageControlNet, tokens: torch.Tensor, scale: float):
        self.net = net
        self.tokens = tokens  # (1, N padded, D)
        self.scale = scale
        self._state: torch.Tensor | None = None

    def refiner_hints(self, image: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                      adaln: torch.Tensor) -> dict[int, torch.Tensor]:
        layout = self.net.layout
        c = self.tokens.expand(image.shape[0], -1, -1)
        hints: list[torch.Tensor] = []
        if layout.version == "1.0":  # plain blocks: refine the control tokens, no hints
            for block in self.net.control_noise_refiner:
                c = block(c, rope, mask, adaln)
        else:  # 2.1: its refiner blocks; 2.0: the control layers, of which the first hints are used
            blocks = self.net.control_noise_refiner if layout.version == "2.1" else self.net.control_layers
            for block in blocks:
                c, hint = block(c, image, rope, mask, adaln)
                hints.append(hint)
        self._state = c
        return {place: hint * self.scale for place, hint in zip(layout.refiner_places, hints)}

    def layer_hints(self, unified: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                    adaln: torch.Tensor) -> dict[int, torch.Tensor]:
        if self._state is None:
            raise RuntimeError("layer_hints called before refiner_hints in this transformer call")
        count = self._state.shape[1]
        # Control tokens where the image tokens are, the (refined) caption tokens after them.
        c = torch.cat([self._state, unified[:, count:]], dim=1)
        self._state = None
        hints = {}
        for place, block in zip(self.net.layout.layer_places, self.net.control_layers):
            c, hint = block(c, unified, rope, mask, adaln)
            hints[place] = hint * self.scale
        return hints
