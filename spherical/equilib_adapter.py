"""pyequilib 0.6.0 behind our conventions: the reference we benchmark and cross-check against.

mtpano samples and re-projects with its own code (`spherical.sampling`,
`spherical.reproject`): it wraps at +-180 degrees, does not fold at the poles, visits only
patch footprints and is faster (README, `make bench-geometry`). This adapter exists so
that the comparison runs on identical cameras and pixels. What it corrects:

- Frames: pyequilib's global frame is (x forward, y right, z down) and its camera frame
  is ours permuted the same way, so with `z_down=True` our yaw/pitch/roll map onto its
  yaw/pitch/roll unchanged for `equi2pers`.
- `equi2pers` reads the ERP one pixel right of and one pixel below the ray's pixel, and
  places patch pixel j at (j - w/2)/f instead of (j + 0.5 - w/2)/f. The adapter feeds it
  the ERP shifted by one pixel (with our spherical padding) and asks for an (h+1, w+1)
  patch of the same focal length, dropping the first row and column.
- `pers2equi` applies its rotation matrix to world rays where the inverse is needed, so
  the adapter passes the ZYX angles of the transposed rotation; it reads patches one
  pixel off like `equi2pers` (the adapter shifts the patch), and its ERP grid sits half a
  pixel early in longitude (corrected by a yaw of half a pixel) and in latitude.

What it cannot correct: `equi2pers` does not interpolate across the +-180 degree seam
(reflection padding) and clamps the last half row above the south pole; `pers2equi`
keeps the half-pixel latitude offset of its ERP grid. The tests measure all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from equilib import equi2pers, pers2equi
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_width
from spherical.sampling import pad_erp

# Our world/camera axes expressed in pyequilib's (forward, right, down) axes.
_AXES = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _zyx_angles(rotation: Tensor) -> list[dict[str, float]]:
    """pyequilib rots (z_down=True) for (N,3,3) rotations R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r = rotation.to(torch.float64)
    yaw = torch.atan2(r[:, 1, 0], r[:, 0, 0])
    pitch = torch.asin(torch.clamp(-r[:, 2, 0], -1.0, 1.0))
    roll = torch.atan2(r[:, 2, 1], r[:, 2, 2])
    return [{"yaw": float(y), "pitch": float(p), "roll": float(o)} for y, p, o in zip(yaw, pitch, roll, strict=True)]


def _equilib_rotation(cameras: PatchCameras) -> Tensor:
    """(N,3,3) camera-to-global rotations in pyequilib's axes."""
    return _AXES @ cameras.rotation.to(torch.float64) @ _AXES.T


def _padded_fov(cameras: PatchCameras, extra: int = 1) -> float:
    """FoV of a patch `extra` pixels wider than `cameras` at the same focal length."""
    focal = cameras.focal.to(torch.float64)
    if not torch.allclose(focal, focal[0]):
        raise ValueError("pyequilib takes one FoV per call: split cameras by FoV")
    return math.degrees(2.0 * math.atan((cameras.width + extra) / 2.0 / float(focal[0])))


def equilib_erp_to_patches(erp: Tensor, cameras: PatchCameras, mode: str = "bilinear") -> Tensor:
    """pyequilib's `equi2pers` with our cameras: (H,W,C) -> same layout as `erp_to_patches`.

    Args:
        erp: (C,H,W) float ERP image.
        cameras: N cameras of one FoV.
    Returns:
        (N,C,h,w) patches.
    """
    _, H, W = erp.shape
    shifted = pad_erp(erp[None])[0, :, :H, :W].contiguous()  # pixel (v,u) moves to (v+1,u+1)
    rots = _zyx_angles(_equilib_rotation(cameras))
    out = equi2pers(
        equi=shifted[None].expand(len(cameras), -1, -1, -1).contiguous(),
        rots=rots,
        height=cameras.height + 1,
        width=cameras.width + 1,
        fov_x=_padded_fov(cameras),
        z_down=True,
        mode=mode,
        clip_output=False,
    )
    return out[:, :, 1:, 1:]


def equilib_patches_to_erp(patches: Tensor, cameras: PatchCameras, erp_height: int) -> Tensor:
    """pyequilib's `pers2equi` with our cameras: one ERP image per patch.

    Args:
        patches: (N,C,h,w) float patch maps.
        cameras: their N cameras (one FoV).
        erp_height: H of the output.
    Returns:
        (N,C,H,W) re-projected patches, 0 outside each patch.
    """
    W = erp_width(erp_height)
    # The inverse rotation, and half a pixel of yaw for pyequilib's ERP longitude grid.
    half_pixel = torch.tensor(-math.pi / W, dtype=torch.float64)
    c, s = torch.cos(half_pixel), torch.sin(half_pixel)
    yaw_back = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    inverse = (yaw_back @ _equilib_rotation(cameras)).transpose(1, 2)
    shifted = F.pad(patches, (1, 0, 1, 0), mode="replicate")[..., :-1, :-1].contiguous()
    return pers2equi(
        pers=shifted,
        rots=_zyx_angles(inverse),
        height=erp_height,
        width=W,
        fov_x=float(cameras.fov_x_deg[0]),
        z_down=True,
        mode="bilinear",
        clip_output=False,
    )
