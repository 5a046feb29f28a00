"""Depth Anything V2 teachers (`DepthAnythingForDepthEstimation`), relative and metric.

Relative checkpoints (`depth_estimation_type` "relative") predict affine-invariant
disparity: `depth_kind = "relative_disparity"`. Metric checkpoints ("metric", e.g. the
Hypersim-trained indoor models) predict planar z-depth in metres: `depth_kind =
"metric_zdepth"`. Inputs are resized like the checkpoint's DPT processor does: towards
its `size` (518 for the released models), keeping the aspect ratio, each side rounded to
a multiple of `ensure_multiple_of` (the ViT patch size, 14, when the processor does not
say). The output stays at the input resolution; the fusion reads it in normalised
coordinates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, DepthKind, TeacherCameras, TeacherError
from pipeline.teachers.hf_common import (
    ImagePreprocessor,
    ResolvedSource,
    check_model_type,
    inference_context,
    load_pretrained,
    read_json,
    read_preprocess_config,
    round_to_multiple,
)

MODEL_TYPE = "depth_anything"
DEFAULT_INPUT_SIZE = 518  # the released checkpoints' processor size


def _target_size(size: int | dict[str, int] | None) -> tuple[int, int]:
    """(height, width) the processor resizes towards."""
    if size is None:
        return DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE
    if isinstance(size, int):
        return size, size
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise TeacherError(
        f"unsupported preprocessor_config.json size {size!r}: expected an int, height/width or shortest_edge"
    )


def depth_kind_of(config: dict[str, Any]) -> DepthKind:
    """The depth kind a Depth Anything config predicts."""
    return METRIC_ZDEPTH if config.get("depth_estimation_type") == "metric" else RELATIVE_DISPARITY


def describe_source(spec: str, source: ResolvedSource) -> dict[str, Any]:
    """The store attributes of a Depth Anything teacher, read from its config files (no weights)."""
    config = read_json(source.path, "config.json")
    check_model_type(config, MODEL_TYPE, f"depth teacher {spec}", "Depth Anything")
    pre = read_preprocess_config(source.path, default_multiple=int(config.get("patch_size", 14)))
    return {
        "spec": spec,
        "model_id": source.model_id,
        "revision": source.revision,
        "architecture": "DepthAnythingForDepthEstimation",
        "depth_kind": depth_kind_of(config),
        "input_size": list(_target_size(pre.size)),
        "input_multiple": pre.multiple,
    }


class DepthAnythingTeacher:
    """Depth teacher on a Depth Anything checkpoint.

    predict(images (B,3,h,w) float RGB in [0,1], cameras) -> (B,h',w') float32: planar
    z-depth in metres (metric checkpoints) or affine-invariant disparity (relative ones),
    at the model's input resolution (h',w') ~ (h,w) resized to the processor's size.
    """

    task = "depth"

    def __init__(self, spec: str, source: ResolvedSource, device: torch.device | str, batch_size: int = 8) -> None:
        from transformers import DepthAnythingForDepthEstimation

        self.device = torch.device(device)
        self.batch_size = batch_size
        self._info = describe_source(spec, source)
        self.depth_kind: DepthKind = self._info["depth_kind"]
        self._target = tuple(self._info["input_size"])
        self._multiple = int(self._info["input_multiple"])
        pre = read_preprocess_config(source.path, default_multiple=self._multiple)
        self._keep_aspect_ratio = pre.keep_aspect_ratio
        self.preprocess = ImagePreprocessor(pre.mean, pre.std).to(self.device)
        self.model = load_pretrained(DepthAnythingForDepthEstimation, source, self.device, f"depth teacher {spec}")

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Model input (H,W) for patches of (height, width), as the DPT processor picks it:
        the scale towards the target that changes the image least, applied to both sides
        when the aspect ratio is kept, each side rounded to the multiple."""
        scale_h = self._target[0] / height
        scale_w = self._target[1] / width
        if self._keep_aspect_ratio:
            scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        return round_to_multiple(scale_h * height, self._multiple), round_to_multiple(scale_w * width, self._multiple)

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        size = self.input_size(images.shape[-2], images.shape[-1])
        pixels = self.preprocess(images.to(self.device), size)  # (B,3,H,W)
        with inference_context(self.device):
            depth = self.model(pixel_values=pixels).predicted_depth  # (B,H,W)
        return depth.float()

    def describe(self) -> dict[str, Any]:
        return dict(self._info)
