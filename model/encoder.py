"""DINOv2 encoder (transformers) returning 4 token maps on the non-square ERP token grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from model.config import BridgeNetConfig


def dinov2_config(config: BridgeNetConfig) -> Dinov2Config | Dinov2WithRegistersConfig:
    """The transformers config of the encoder that `config` describes."""
    sizes = {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "patch_size": config.patch_size,
        "image_size": config.encoder_image_size,
    }
    if config.num_register_tokens:
        return Dinov2WithRegistersConfig(**sizes, num_register_tokens=config.num_register_tokens)
    return Dinov2Config(**sizes)


class DinoEncoder(nn.Module):
    """DINOv2 (`Dinov2Model`, or `Dinov2WithRegistersModel` with register tokens) on ERP images.

    Position embeddings are interpolated by transformers to the actual token grid, which
    for an ERP image is (H/p) x (W/p) = h x 2h. The prefix tokens (CLS, then the registers)
    are counted from the backbone's config, never assumed.
    """

    def __init__(self, config: BridgeNetConfig) -> None:
        super().__init__()
        expected = dinov2_config(config)
        model_class = Dinov2WithRegistersModel if config.num_register_tokens else Dinov2Model
        if config.encoder_checkpoint is None:
            self.backbone = model_class(expected)
        else:
            self.backbone = _load_checkpoint(model_class, expected, Path(config.encoder_checkpoint))
        self.layers = config.encoder_layers
        self.patch_size = config.patch_size
        self.num_prefix_tokens = 1 + getattr(self.backbone.config, "num_register_tokens", 0)

    def forward(self, pixels: Tensor) -> list[Tensor]:
        """pixels: (B,3,H',W') ImageNet-normalised, H' and W' multiples of the patch size.

        Returns 4 maps (B,D,h,w), h = H'/p, w = W'/p: the final-layernormed outputs of the
        `encoder_layers` blocks without the prefix tokens.
        """
        B, _, height, width = pixels.shape
        assert height % self.patch_size == 0 and width % self.patch_size == 0, (
            f"encoder input {height}x{width} is not a multiple of the patch size {self.patch_size}"
        )
        h, w = height // self.patch_size, width // self.patch_size
        out = self.backbone(pixel_values=pixels, output_hidden_states=True)
        maps = []
        for layer in self.layers:
            tokens = self.backbone.layernorm(out.hidden_states[layer + 1])  # [0] is the embedding output
            patches = tokens[:, self.num_prefix_tokens :]  # (B,h*w,D), row-major over the grid
            assert patches.shape[1] == h * w, f"{patches.shape[1]} patch tokens for a {h}x{w} grid"
            maps.append(patches.transpose(1, 2).reshape(B, -1, h, w))  # (B,h*w,D) -> (B,D,h*w) -> (B,D,h,w)
        return maps


def _load_checkpoint(
    model_class: type[Dinov2Model] | type[Dinov2WithRegistersModel],
    expected: Dinov2Config | Dinov2WithRegistersConfig,
    directory: Path,
) -> Dinov2Model | Dinov2WithRegistersModel:
    """Load a transformers DINOv2 checkpoint that must match `expected` and load completely."""
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"encoder_checkpoint {directory} has no config.json (a save_pretrained directory)")
    found = AutoConfig.from_pretrained(directory)
    if found.model_type != expected.model_type:
        raise ValueError(
            f"encoder_checkpoint {directory} is a {found.model_type!r} model, the config asks for "
            f"{expected.model_type!r} (num_register_tokens selects dinov2_with_registers)"
        )
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
    fields += ("num_register_tokens",) if expected.model_type == "dinov2_with_registers" else ()
    mismatched = {f: (getattr(found, f), getattr(expected, f)) for f in fields}
    mismatched = {f: pair for f, pair in mismatched.items() if pair[0] != pair[1]}
    if mismatched:
        raise ValueError(f"encoder_checkpoint {directory} does not match the config (checkpoint, config): {mismatched}")
    # float32 like the rest of BridgeNet, whatever dtype the checkpoint was saved in.
    model, info = model_class.from_pretrained(directory, output_loading_info=True, dtype=torch.float32)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"encoder_checkpoint {directory} does not load completely: {problems}")
    return model
