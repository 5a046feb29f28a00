"""No-cost teachers for `make bench-labels`: what the pipeline costs around the teachers.

Each teacher looks at a fixed box room (walls, floor and ceiling, turned 20 degrees from the
world axes so no patch border lines up with an edge) from the panorama's centre, and returns
exactly what the real teacher of its task returns, at the real teacher's resolution:

- depth (`py:benchmarks.free_teachers:depth`): (B,h,w) planar z-depth in metres, like
  Depth Anything V2 Metric;
- relative depth (`py:benchmarks.free_teachers:relative_depth`): (B,h,w) affine-invariant
  disparity (2/z + 0.1), like Depth Anything V2's relative models;
- normals (`py:benchmarks.free_teachers:normals`): (B,3,h,w) unit camera-frame normals;
- semantic (`py:benchmarks.free_teachers:semantic`): (B,150,h/4,w/4) probabilities over the
  ADE20K classes, dense and smooth like Mask2Former's: every class has some mass, which
  varies slowly across the patch, and the true class stands out.

Outputs depend only on the camera, and are computed once per camera and kept: from the
second panorama of a layout on, a call costs a dictionary look-up and a stack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.teachers.base import RELATIVE_DISPARITY, TeacherCameras
from spherical.ade20k import ADE20K_CLASSES
from spherical.camera import PatchCameras

# The room: planes n . p = offset in the world frame (y down), before the 20 degree yaw.
_PLANES = (
    ((1.0, 0.0, 0.0), 3.0, "wall"),
    ((-1.0, 0.0, 0.0), 2.5, "wall"),
    ((0.0, 0.0, 1.0), 4.0, "wall"),
    ((0.0, 0.0, -1.0), 3.5, "wall"),
    ((0.0, 1.0, 0.0), 1.5, "floor"),
    ((0.0, -1.0, 0.0), 1.2, "ceiling"),
)
_ROOM_YAW_DEG = 20.0
_SEMANTIC_STRIDE = 4  # Mask2Former's masks come at a quarter of the input size
_TRUE_SHARE = 0.7  # the true class's share of the probability, the rest spread over all classes
_NOISE_CELLS = 5  # the rest varies over about a fifth of the patch


def _room_planes(dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(6,3) unit world normals pointing out of the room, (6,) offsets, (6,) ADE20K class ids."""
    a = math.radians(_ROOM_YAW_DEG)
    yaw = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    normals = torch.tensor([p[0] for p in _PLANES]) @ yaw.T  # (6,3)
    offsets = torch.tensor([p[1] for p in _PLANES])
    classes = torch.tensor([ADE20K_CLASSES.index(p[2]) for p in _PLANES])
    return normals.to(dtype), offsets.to(dtype), classes


def _key(cameras: TeacherCameras, i: int) -> tuple:
    """Camera i of a batch, as a dictionary key: its rotation to 1e-6, FoV and size."""
    rotation = tuple(torch.round(cameras.rotation[i].double() * 1e6).long().flatten().tolist())
    return rotation, round(float(cameras.fov_x_deg[i]), 6), cameras.height


# What each camera sees, per camera and size: the depth and normals teachers of a worker share it.
_SEEN: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _look(cameras: TeacherCameras, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """What each camera sees at `size` x `size` pixels: (B,h,w) z-depth, (B,3,h,w) unit
    camera-frame normals facing the camera, (B,h,w) int64 class ids."""
    keys = [(*_key(cameras, i), size) for i in range(len(cameras))]
    missing = [i for i, k in enumerate(keys) if k not in _SEEN]
    if missing:
        for i, *seen in zip(missing, *_render(cameras[missing], size), strict=True):
            _SEEN[keys[i]] = tuple(seen)
    return tuple(torch.stack([_SEEN[k][part] for k in keys]) for part in range(3))


def _render(cameras: TeacherCameras, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """`_look`, computed."""
    small = PatchCameras(cameras.rotation.float(), cameras.fov_x_deg.float(), size, size)
    normals, offsets, classes = _room_planes(torch.float32)
    dx, dy, dz = small.world_directions()  # (B,h,w) each: c_z = 1 rays in the world frame
    zdepth = torch.full_like(dx, math.inf)
    plane = torch.zeros(dx.shape, dtype=torch.int64)
    for k, (n, offset) in enumerate(zip(normals.tolist(), offsets.tolist(), strict=True)):
        facing = dx * n[0] + dy * n[1] + dz * n[2]  # n . d
        t = torch.where(facing > 0, offset / facing, math.inf)  # the plane at t = z (c_z = 1)
        nearer = t < zdepth
        zdepth = torch.where(nearer, t, zdepth)
        plane.masked_fill_(nearer, k)
    world_n = -normals[plane]  # (B,h,w,3): facing the camera
    cam_n = torch.einsum("bkm,bhwk->bmhw", small.rotation, world_n)  # R^T n, (B,3,h,w)
    return zdepth, cam_n, classes[plane]


class FreeDepth:
    task = "depth"
    batch_size = 8

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        return _look(cameras, cameras.height)[0].to(images.device)  # (B,h,w)

    def describe(self) -> dict[str, str]:
        return {"model": "free box-room depth (benchmark)"}


class FreeRelativeDepth:
    task = "depth"
    batch_size = 8
    depth_kind = RELATIVE_DISPARITY

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        return (2.0 / _look(cameras, cameras.height)[0] + 0.1).to(images.device)  # (B,h,w)

    def describe(self) -> dict[str, str]:
        return {"model": "free box-room relative disparity (benchmark)"}


class FreeNormals:
    task = "normals"
    batch_size = 8

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        return _look(cameras, cameras.height)[1].to(images.device)  # (B,3,h,w)

    def describe(self) -> dict[str, str]:
        return {"model": "free box-room normals (benchmark)"}


class FreeSemantic:
    task = "semantic"
    batch_size = 8
    class_names = ADE20K_CLASSES

    def __init__(self) -> None:
        self.cache: dict[tuple, Tensor] = {}  # probabilities per camera

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        keys = [_key(cameras, i) for i in range(len(cameras))]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            for i, value in zip(missing, self._compute(cameras[missing]), strict=True):
                self.cache[keys[i]] = value
        return torch.stack([self.cache[k] for k in keys]).to(images.device)

    def _compute(self, cameras: TeacherCameras) -> Tensor:
        size = -(-cameras.height // _SEMANTIC_STRIDE)
        _, _, classes = _look(cameras, size)  # (B,h/4,w/4)
        generator = torch.Generator().manual_seed(0)
        cells = torch.randn(len(cameras), len(ADE20K_CLASSES), _NOISE_CELLS, _NOISE_CELLS, generator=generator)
        # The rest: a smooth distribution over every class, upsampled from a few cells.
        rest = F.interpolate(cells.softmax(1), size=(size, size), mode="bilinear", align_corners=True)
        probs = rest.mul_(1.0 - _TRUE_SHARE)  # (B,C,h/4,w/4)
        return probs.scatter_add_(1, classes[:, None], torch.full((len(cameras), 1, size, size), _TRUE_SHARE))

    def describe(self) -> dict[str, str]:
        return {"model": "free box-room semantic probabilities (benchmark)"}


def depth() -> FreeDepth:
    return FreeDepth()


def relative_depth() -> FreeRelativeDepth:
    return FreeRelativeDepth()


def normals() -> FreeNormals:
    return FreeNormals()


def semantic() -> FreeSemantic:
    return FreeSemantic()
