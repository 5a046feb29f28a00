"""A `py:` teacher plugin that samples the real Replica ground truth (../shared/data/real).

Used by test_pipeline_replica.py as `py:replica_teacher:depth` etc. Each teacher reads the
Replica maps of the panorama a patch was cut from (pano id = the file's number, "0006") out
of the folder in the MTPANO_REAL_DATA environment variable, samples them into the patch
cameras with the project's own geometry, and returns them in the teacher protocol's frames:
planar z-depth, camera-frame normals, class probabilities. It ignores the images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.teachers.base import TeacherCameras
from pipeline.teachers.sim import ScaleField
from spherical.depth import world_to_camera_normals
from spherical.sampling import erp_to_patches
from storage.groundtruth import read_depth, read_normals

NUM_CLASSES = 150
CLASS_NAMES = tuple(f"segment {i}" for i in range(NUM_CLASSES))


def replica_dir() -> Path:
    return Path(os.environ["MTPANO_REAL_DATA"]) / "replica"


@functools.lru_cache(maxsize=3)
def ground_truth(pano_id: str) -> dict[str, Tensor]:
    """(1,1,H,W) range (NaN invalid), (1,3,H,W) world normals, (1,1,H,W) segment ids."""
    root = replica_dir()
    depth = read_depth(root / f"{pano_id}_depth.png")
    normals = read_normals(root / f"{pano_id}_normals.png")
    return {
        "range": torch.from_numpy(depth)[None, None],
        "normals": torch.from_numpy(normals)[None],
        "segments": torch.from_numpy(segment_ids(pano_id))[None, None],
    }


def segment_ids(pano_id: str) -> np.ndarray:
    """(H,W) int64 segment id of every pixel: its RGB colour's rank among the colours."""
    bgr = cv2.imread(str(replica_dir() / f"{pano_id}_semantic.png"), cv2.IMREAD_COLOR)
    packed = bgr.astype(np.int64) @ np.array([1, 256, 65536])  # (H,W) one integer per colour
    _, ids = np.unique(packed, return_inverse=True)
    return ids.reshape(packed.shape)


def _sample(name: str, cameras: TeacherCameras, mode: str = "bilinear") -> Tensor:
    """(B,C,h,w) ground truth map `name` in each patch (each from its own panorama)."""
    out = []
    for i, pano_id in enumerate(cameras.pano_ids):
        out.append(erp_to_patches(ground_truth(pano_id)[name], cameras[i], mode=mode)[0])  # (1,C,h,w)
    return torch.cat(out)


class ReplicaDepth:
    task = "depth"

    def __init__(self, scale_error: float = 0.0) -> None:
        self.scale_error = scale_error

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        range_ = _sample("range", cameras)[:, 0]  # (B,h,w)
        zdepth = range_ / cameras.ray_norms()
        if self.scale_error:
            axes = cameras.optical_axes().double().numpy()
            scales = [
                ScaleField.draw(self.scale_error, int(p)).scale(axes[i : i + 1])[0]
                for i, p in enumerate(cameras.pano_ids)
            ]
            zdepth = zdepth * torch.tensor(scales, dtype=zdepth.dtype)[:, None, None]
        return zdepth


class ReplicaNormals:
    task = "normals"

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        world = F.normalize(_sample("normals", cameras), dim=1)  # (B,3,h,w)
        return world_to_camera_normals(world, cameras.rotation)


class ReplicaSemantic:
    task = "semantic"
    class_names = CLASS_NAMES

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        ids = _sample("segments", cameras, mode="nearest")[:, 0].long()  # (B,h,w)
        return F.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()  # (B,h,w,C) -> (B,C,h,w)


def depth() -> ReplicaDepth:
    return ReplicaDepth()


def depth_scaled() -> ReplicaDepth:
    """Depth with per-patch scale errors of up to +-20% (zero-mean over the sphere)."""
    return ReplicaDepth(scale_error=0.2)


def normals() -> ReplicaNormals:
    return ReplicaNormals()


def semantic() -> ReplicaSemantic:
    return ReplicaSemantic()
