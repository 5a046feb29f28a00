"""The teacher protocol: what the label pipeline asks of a perspective model.

A teacher is any object with

- `task`: "depth", "semantic" or "normals";
- `predict(images, cameras)`: `images` (B,3,h,w) float32 RGB in [0,1] on the teacher's
  device, `cameras` a `TeacherCameras` batch (world-from-camera rotations, FoV, patch size,
  and the id of the panorama each patch was cut from). It returns
  - depth: (B,h',w') planar z-depth in metres, or affine-invariant disparity when the
    teacher's `depth_kind` is "relative_disparity";
  - semantic: (B,C,h',w') class probabilities (they sum to 1 over C), with the class names
    in the teacher's `class_names`;
  - normals: (B,3,h',w') unit vectors in each patch's camera frame (OpenCV: x right, y down,
    z forward), facing the camera.
  (h',w') is (h,w), or a lower resolution of the same aspect ratio: maps are read with
  normalised coordinates, so a teacher need not upsample its output (Mask2Former's masks
  come at a quarter of the input size). The return value may instead be a `Prediction`
  that also carries a per-pixel confidence in [0,1] (B,h',w').

Optional attributes the pipeline reads when present: `depth_kind` (default "metric_zdepth"),
`class_names` (default: ADE20K-150), `batch_size` (patches per call, default 8), and
`describe()` (a JSON-able dict that names the model and its revision for the store's
attributes). A normals teacher with `from_depth = True` is not given images: it gets the
depth teacher's patch output through `predict_from_depth(zdepth, cameras)`.

Plugins: `py:package.module:factory` names a function that returns such an object.

Determinism: a re-run must give identical labels, so a teacher that draws random numbers
(a diffusion model's noise, a simulated error) seeds them per patch with `patch_seed`,
from the panorama id and the patch's rotation, never from Python's salted `hash`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from spherical.camera import PatchCameras

Task = Literal["depth", "semantic", "normals"]
TASKS: tuple[Task, ...] = ("depth", "semantic", "normals")
DepthKind = Literal["metric_zdepth", "relative_disparity"]
METRIC_ZDEPTH: DepthKind = "metric_zdepth"
RELATIVE_DISPARITY: DepthKind = "relative_disparity"
DEFAULT_BATCH_SIZE = 8


def patch_seed(pano_id: str, rotation: Tensor, *salt: object) -> int:
    """A 63-bit seed that depends only on the panorama id, the patch's (3,3) rotation
    (rounded to 1e-4, so float noise does not change it) and any extra `salt`."""
    entries = torch.round(rotation.detach().double().cpu().reshape(9) * 1e4).long().tolist()  # (9,)
    key = "|".join([pano_id, ",".join(str(v) for v in entries), *(str(s) for s in salt)])
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


class TeacherError(RuntimeError):
    """A teacher cannot be built or used (missing weights, bad spec, bad output)."""


@dataclass(frozen=True)
class TeacherCameras(PatchCameras):
    """Patch cameras of a teacher batch, with the panorama each patch was cut from.

    Fields (besides `PatchCameras`'): pano_ids: B panorama ids, one per patch.
    """

    pano_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.pano_ids) != self.rotation.shape[0]:
            raise ValueError(f"need one pano id per camera: {len(self.pano_ids)} ids, {self.rotation.shape[0]} cameras")

    @classmethod
    def from_cameras(cls, cameras: PatchCameras, pano_ids: list[str] | tuple[str, ...]) -> TeacherCameras:
        return cls(cameras.rotation, cameras.fov_x_deg, cameras.height, cameras.width, tuple(pano_ids))

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> TeacherCameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        ids = (
            [self.pano_ids[i] for i in range(len(self.pano_ids))[index]]
            if isinstance(index, slice)
            else [self.pano_ids[int(i)] for i in torch.as_tensor(index).reshape(-1)]
        )
        return TeacherCameras.from_cameras(super().__getitem__(index), ids)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TeacherCameras:
        return TeacherCameras.from_cameras(super().to(device, dtype), self.pano_ids)


@dataclass(frozen=True)
class Prediction:
    """A teacher output with a per-pixel confidence.

    Fields:
        value: the task's map (see the module doc for shapes).
        confidence: (B,h',w') float in [0,1], at the resolution of `value`.
    """

    value: Tensor
    confidence: Tensor


@runtime_checkable
class Teacher(Protocol):
    """A perspective teacher (see the module doc)."""

    task: Task

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor | Prediction: ...
