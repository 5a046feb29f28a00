"""Normals derived from the depth teacher's patch output, with no model of their own.

`GeometricNormalsTeacher` (`from_depth = True`) gets each patch's planar z-depth and
differentiates the back-projected points (`spherical.depth.normals_from_zdepth`: one-sided
differences on the side with the shorter step, so a surface next to a depth edge is
differenced on its own side). Normals are invariant to a depth scale, so per-patch or
global metric scale errors do not matter; an affine-invariant disparity (unknown shift)
does, which is why the registry refuses this teacher beside a relative depth teacher.

Confidence comes from local planarity. On a plane n.X = d seen through a pinhole,
1/z = (n.c)/d is affine in the pixel coordinates, so its second differences vanish. The
residual r is the smallest relative second difference of 1/z along each image axis (the
forward, central or backward stencil, mirroring the one-sided normals), the worse of the
two axes; confidence = 1 / (1 + (r / planarity_scale)^2). Planes, and smooth surfaces at
this pixel scale, get ~1; depth noise, creases and pixels between two depth edges get less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.teachers.base import Prediction, TeacherCameras
from spherical.depth import normals_from_zdepth


@dataclass(frozen=True)
class GeometricNormalsConfig:
    """Settings of the geometric normals teacher."""

    # Relative second difference of inverse depth at which the confidence is 1/2.
    planarity_scale: float = 0.01


def cameras_at(cameras: TeacherCameras, height: int, width: int) -> TeacherCameras:
    """The same patch cameras (rotation, horizontal FoV) at another pixel size: depth from a
    teacher may come at its own resolution, covering the same patch."""
    if (cameras.height, cameras.width) == (height, width):
        return cameras
    return TeacherCameras(cameras.rotation, cameras.fov_x_deg, height, width, cameras.pano_ids)


def _axis_residual(q: Tensor, dim: int) -> Tensor:
    """(B,h,w) smallest |second difference| of q along `dim` over the backward, central and
    forward stencils, relative to |q|; inf where no stencil has valid values."""
    pad = [0, 0, 0, 0]
    pad[0 if dim == -1 else 2] = 2
    pad[1 if dim == -1 else 3] = 2
    padded = F.pad(q[:, None], pad, value=float("nan"))[:, 0]  # (B,h+4,w) or (B,h,w+4)
    size = q.shape[dim]

    def shifted(offset: int) -> Tensor:
        return padded.narrow(dim, 2 + offset, size)

    stencils = torch.stack(
        [
            shifted(-2) - 2 * shifted(-1) + q,
            shifted(-1) - 2 * q + shifted(1),
            q - 2 * shifted(1) + shifted(2),
        ]
    )  # (3,B,h,w)
    relative = torch.nan_to_num(stencils.abs() / q.abs(), nan=torch.inf)
    return relative.min(0).values


def planarity_confidence(zdepth: Tensor, planarity_scale: float) -> Tensor:
    """(B,h,w) confidence in [0,1] of normals from (B,h,w) z-depth (see the module doc)."""
    q = torch.where(zdepth > 0, 1.0 / zdepth, torch.nan)  # (B,h,w) inverse depth
    residual = torch.maximum(_axis_residual(q, -1), _axis_residual(q, -2))
    return 1.0 / (1.0 + (residual / planarity_scale) ** 2)


class GeometricNormalsTeacher:
    """Normals teacher on the depth teacher's output.

    predict_from_depth(zdepth (B,h,w) float metric z-depth, cameras) -> Prediction with
    value (B,3,h,w) float32 unit normals in each camera frame facing the camera (NaN where
    undefined) and confidence (B,h,w) in [0,1] (0 where the normal is NaN).
    """

    task = "normals"
    from_depth = True
    batch_size = 8

    def __init__(self, config: GeometricNormalsConfig | None = None, spec: str = "geometric") -> None:
        self.config = config or GeometricNormalsConfig()
        self.spec = spec

    def predict_from_depth(self, zdepth: Tensor, cameras: TeacherCameras) -> Prediction:
        depth = zdepth.float()
        cams = cameras_at(cameras, depth.shape[-2], depth.shape[-1]).to(depth.device, torch.float32)
        normals = normals_from_zdepth(depth, cams)  # (B,3,h,w)
        confidence = planarity_confidence(depth, self.config.planarity_scale)  # (B,h,w)
        defined = torch.isfinite(normals).all(1)  # (B,h,w)
        return Prediction(normals, torch.where(defined, confidence, torch.zeros_like(confidence)))

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "model_id": "geometric",
            "revision": "geometric-v1",
            "planarity_scale": self.config.planarity_scale,
        }
