"""Mask2Former semantic teachers (`Mask2FormerForUniversalSegmentation`, ADE20K checkpoints).

Mask2Former predicts Q mask queries, each with class logits over C classes plus a
"no object" class, and a mask. The semantic map is the per-pixel mixture

    p(c | x) ∝ sum_q softmax(class_logits_q)[c] * sigmoid(mask_logits_q(x))

with the no-object column dropped, normalised over the C classes (as
`post_process_semantic_segmentation` does before its argmax; we keep the soft
probabilities). Masks come at a quarter of the input resolution and are not upsampled.
Inputs: the patch resized so that its short side is the processor's (512 for the ADE20K
checkpoints), each side rounded to a multiple of `size_divisor` (32).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.teachers.base import TeacherCameras, TeacherError
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

MODEL_TYPE = "mask2former"
DEFAULT_SHORT_SIDE = 512  # the ADE20K checkpoints' processor
DEFAULT_MULTIPLE = 32
# Below this total mask mass a pixel has no class evidence at all; it gets a uniform distribution.
_MIN_MASS = 1e-12


def _short_side(size: int | dict[str, int] | None) -> tuple[int, int | None]:
    """(short side, longest side cap or None) the processor resizes to."""
    if size is None:
        return DEFAULT_SHORT_SIDE, None
    if isinstance(size, int):
        return size, None
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), (int(size["longest_edge"]) if size.get("longest_edge") else None)
    if "height" in size and "width" in size:
        return min(int(size["height"]), int(size["width"])), None
    raise TeacherError(
        f"unsupported preprocessor_config.json size {size!r}: expected an int, shortest_edge or height/width"
    )


def class_names_of(config: dict[str, Any], prefix: str) -> tuple[str, ...]:
    """Class names in id order from a config's `id2label` (ids must be 0..C-1)."""
    id2label = config.get("id2label") or {}
    try:
        labels = {int(k): str(v).strip() for k, v in id2label.items()}
    except ValueError:
        raise TeacherError(f"{prefix}: config.json id2label has non-integer ids") from None
    if not labels or sorted(labels) != list(range(len(labels))):
        raise TeacherError(f"{prefix}: config.json id2label must name classes 0..C-1, got {len(labels)} entries")
    return tuple(labels[i] for i in range(len(labels)))


def describe_source(spec: str, source: ResolvedSource) -> dict[str, Any]:
    """The store attributes of a Mask2Former teacher, read from its config files (no weights)."""
    prefix = f"semantic teacher {spec}"
    config = read_json(source.path, "config.json")
    check_model_type(config, MODEL_TYPE, prefix, "Mask2Former")
    pre = read_preprocess_config(source.path, default_multiple=DEFAULT_MULTIPLE)
    short, longest = _short_side(pre.size)
    return {
        "spec": spec,
        "model_id": source.model_id,
        "revision": source.revision,
        "architecture": "Mask2FormerForUniversalSegmentation",
        "num_classes": len(class_names_of(config, prefix)),
        "input_short_side": short,
        "input_long_side_max": longest,
        "input_multiple": pre.multiple,
    }


def semantic_probabilities(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-pixel class probabilities from Mask2Former's query outputs.

    Args:
        class_logits: (B,Q,C+1) logits; the last column is "no object".
        mask_logits: (B,Q,h,w) mask logits.
    Returns:
        (B,C,h,w) float32 probabilities summing to 1 over C (uniform where no query has mass).
    """
    class_probs = class_logits.float().softmax(-1)[..., :-1]  # (B,Q,C)
    mask_probs = mask_logits.float().sigmoid()  # (B,Q,h,w)
    mass = torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs)  # (B,C,h,w)
    total = mass.sum(1, keepdim=True)  # (B,1,h,w)
    uniform = torch.full_like(mass, 1.0 / mass.shape[1])
    return torch.where(total > _MIN_MASS, mass / total.clamp_min(_MIN_MASS), uniform)


class Mask2FormerSemanticTeacher:
    """Semantic teacher on a Mask2Former checkpoint.

    predict(images (B,3,h,w) float RGB in [0,1], cameras) -> (B,C,h',w') float32 class
    probabilities at a quarter of the model input, (h',w') ~ (h,w) * short side / min(h,w) / 4.
    """

    task = "semantic"

    def __init__(self, spec: str, source: ResolvedSource, device: torch.device | str, batch_size: int = 8) -> None:
        from transformers import Mask2FormerForUniversalSegmentation

        self.device = torch.device(device)
        self.batch_size = batch_size
        self._info = describe_source(spec, source)
        self.class_names = class_names_of(read_json(source.path, "config.json"), f"semantic teacher {spec}")
        pre = read_preprocess_config(source.path, default_multiple=DEFAULT_MULTIPLE)
        self._short, self._longest = self._info["input_short_side"], self._info["input_long_side_max"]
        self._multiple = pre.multiple
        self.preprocess = ImagePreprocessor(pre.mean, pre.std).to(self.device)
        self.model = load_pretrained(
            Mask2FormerForUniversalSegmentation, source, self.device, f"semantic teacher {spec}"
        )

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Model input (H,W) for patches of (height, width): short side to the processor's,
        the long side capped when the processor caps it, both rounded to the multiple."""
        scale = self._short / min(height, width)
        if self._longest is not None:
            scale = min(scale, self._longest / max(height, width))
        return round_to_multiple(height * scale, self._multiple), round_to_multiple(width * scale, self._multiple)

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        size = self.input_size(images.shape[-2], images.shape[-1])
        pixels = self.preprocess(images.to(self.device), size)  # (B,3,H,W)
        with inference_context(self.device):
            out = self.model(pixel_values=pixels)
        with torch.no_grad():
            return semantic_probabilities(out.class_queries_logits, out.masks_queries_logits)

    def describe(self) -> dict[str, Any]:
        return dict(self._info)
