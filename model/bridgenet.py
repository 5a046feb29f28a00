"""BridgeNet: the panoramic dual multi-task network (encoder, neck, one DPT decoder per task)."""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor, nn

from model.blocks import resize_erp
from model.bridge import PanoramicNeck
from model.config import BridgeNetConfig
from model.decoder import DPTDecoder
from model.encoder import DinoEncoder
from spherical.erp import erp_width

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BridgeNetOutput(TypedDict, total=False):
    """Predictions for (B,3,H,W) ERP images; a main task's key is present when it is configured.

    depth: (B,1,H,W) float32 > 0, per ERP pixel (range or disparity: the training labels decide).
    semantic: (B,C,H,W) float32 class logits, C = num_classes.
    normals: (B,3,H,W) float32 unit surface normals in the world frame (x right, y down, z forward).
    aux: auxiliary outputs (always present, possibly empty):
        gradient: (B,1,H,W) >= 0 image-gradient magnitude (with aux_tasks and an invariant task).
        edge_distance: (B,1,H,W) >= 0 distance to the nearest edge (likewise).
        points: (B,3,H,W) world-frame 3-D points, target range x ray (with aux_tasks and normals).
        coarse_<task>: (B,C_t,h,w) the bridge head's coarse prediction on the h x 2h token grid,
            for every main and auxiliary task (with use_bridge), in the task's output domain.
    """

    depth: Tensor
    semantic: Tensor
    normals: Tensor
    aux: dict[str, Tensor]


class BridgeNet(nn.Module):
    """Multi-task dense prediction on ERP panoramas; `BridgeNet(config)(images)`.

    The encoder runs at the nearest size whose sides are multiples of the patch size
    (h x 2h tokens); the neck and the decoders follow the config's switches; every output
    is at the input's full resolution.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, config: BridgeNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = DinoEncoder(config)
        self.neck = PanoramicNeck(config) if config.use_grouping or config.use_bridge else None
        self.decoders = nn.ModuleDict(
            {task: DPTDecoder(config, head_tasks) for task, head_tasks in config.decoder_heads().items()}
        )
        # ImageNet normalisation (DINOv2 was trained with it), broadcast over (B,3,H,W) images.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)  # (1,3,1,1)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)  # (1,3,1,1)

    def encoder_size(self, height: int) -> tuple[int, int]:
        """(H', W') the encoder sees for an ERP image of `height`: multiples of the patch size, W' = 2H'."""
        p = self.config.patch_size
        tokens = max(1, round(height / p))
        return tokens * p, erp_width(tokens) * p

    def forward(self, images: Tensor) -> BridgeNetOutput:
        """images: (B,3,H,W) float RGB in [0,1], ERP (W = 2H), on the model's device.

        Returns a `BridgeNetOutput` at (H, W).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W) RGB, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point RGB in [0,1], got {images.dtype}")
        height, width = images.shape[-2:]
        if width != erp_width(height):
            raise ValueError(f"ERP images must have W = 2H, got {height}x{width}")
        return self.decode(self.encode(images), (height, width))

    def encode(self, images: Tensor) -> list[Tensor]:
        """(B,3,H,W) RGB in [0,1] -> the encoder's 4 token maps (B,D,h,2h)."""
        pixels = resize_erp(images, self.encoder_size(images.shape[-2]), self.config.padding)
        return self.encoder((pixels - self.mean) / self.std)

    def decode(self, levels: list[Tensor], size: tuple[int, int]) -> BridgeNetOutput:
        """Neck and decoders: 4 token maps (B,D,h,2h) -> outputs at size (H, W)."""
        if self.neck is None:
            inputs, coarse = {task: levels for task in self.decoders}, {}
        else:
            inputs, coarse = self.neck(levels)
        output = BridgeNetOutput(aux={f"coarse_{task}": c for task, c in coarse.items()})
        for task, decoder in self.decoders.items():
            predictions = decoder(inputs[task], size)
            output[task] = predictions.pop(task)
            output["aux"].update(predictions)
        return output
