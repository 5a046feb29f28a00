"""From BridgeNet outputs to predictions in the label stores' terms (what the metrics score and
what `mtpano predict` writes)."""

from __future__ import annotations

import torch
from torch import Tensor

from model import BridgeNet, BridgeNetOutput


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting on `device` (None: plain fp32).

    "auto" is bf16 on CUDA (no loss scaling needed, the range of fp32) and fp32 elsewhere.
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def predictions(output: BridgeNetOutput) -> dict[str, Tensor]:
    """Label-store predictions of a forward pass, in float32.

    Returns the tasks the model has: "depth" (B,H,W) > 0 (range in metres for a model trained
    on metric stores), "semantic" (B,H,W) int64 argmax class ids, "semantic_confidence" (B,H,W)
    the softmax probability of that class, "normals" (B,3,H,W) unit vectors, world frame.
    """
    out: dict[str, Tensor] = {}
    if "depth" in output:
        out["depth"] = output["depth"][:, 0].float()  # (B,1,H,W) -> (B,H,W)
    if "semantic" in output:
        probabilities = output["semantic"].float().softmax(1)  # (B,C,H,W)
        confidence, ids = probabilities.max(1)
        out["semantic"], out["semantic_confidence"] = ids, confidence
    if "normals" in output:
        out["normals"] = torch.nn.functional.normalize(output["normals"].float(), dim=1)
    return out


@torch.no_grad()
def predict(model: BridgeNet, images: Tensor, precision: str = "auto") -> dict[str, Tensor]:
    """`predictions` of `model` on (B,3,H,W) float RGB in [0,1], ERP, on the model's device."""
    device = images.device
    dtype = autocast_dtype(device, precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        output = model(images)
    return predictions(output)
