"""Yaw/pitch/roll <-> world-from-camera rotation matrices.

R = R_yaw(psi) @ R_pitch(vartheta) @ R_roll(rho), with R_yaw about y, R_pitch about x and
R_roll about z (docs/conventions.md). With roll 0 the optical axis R e_z is the ERP ray at
longitude psi and latitude vartheta: positive yaw turns right, positive pitch looks up.
All functions are batched over leading dimensions and keep the input dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_tensor(angle: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(angle, Tensor):
        return angle
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(angle, dtype=dtype, device=device)


def _matrix(rows: list[list[Tensor]]) -> Tensor:
    """Stack a 3x3 nested list of broadcastable tensors into (..., 3, 3)."""
    flat = torch.broadcast_tensors(*[entry for row in rows for entry in row])
    return torch.stack(flat, -1).unflatten(-1, (3, 3))  # (...,9) -> (...,3,3)


def yaw_matrix(angle: Tensor | float) -> Tensor:
    """Rotation about the y axis by `angle` radians, (..., 3, 3)."""
    a = _as_tensor(angle)
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return _matrix([[c, o, s], [o, i, o], [-s, o, c]])


def pitch_matrix(angle: Tensor | float) -> Tensor:
    """Rotation about the x axis by `angle` radians, (..., 3, 3)."""
    a = _as_tensor(angle)
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return _matrix([[i, o, o], [o, c, -s], [o, s, c]])


def roll_matrix(angle: Tensor | float) -> Tensor:
    """Rotation about the z axis by `angle` radians, (..., 3, 3)."""
    a = _as_tensor(angle)
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return _matrix([[c, -s, o], [s, c, o], [o, o, i]])


def ypr_to_matrix(yaw: Tensor | float, pitch: Tensor | float, roll: Tensor | float = 0.0) -> Tensor:
    """World-from-camera rotation (..., 3, 3) from yaw, pitch, roll in radians."""
    like = next((a for a in (yaw, pitch, roll) if isinstance(a, Tensor)), None)
    yaw, pitch, roll = (_as_tensor(a, like) for a in (yaw, pitch, roll))
    return yaw_matrix(yaw) @ pitch_matrix(pitch) @ roll_matrix(roll)


def matrix_to_ypr(rotation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Yaw, pitch, roll (radians) of world-from-camera rotations (..., 3, 3).

    Inverse of `ypr_to_matrix` for pitch in (-pi/2, pi/2); at pitch = +-pi/2 yaw and roll
    are not separable and the split returned puts all of it into yaw.
    """
    r = rotation
    pitch = torch.asin(torch.clamp(-r[..., 1, 2], -1.0, 1.0))
    yaw = torch.atan2(r[..., 0, 2], r[..., 2, 2])
    roll = torch.atan2(r[..., 1, 0], r[..., 1, 1])
    gimbal = torch.hypot(r[..., 1, 0], r[..., 1, 1]) < 1e-6
    if bool(gimbal.any()):
        # Optical axis on the pole: R = R_yaw(yaw +- roll) R_pitch(+-pi/2); report roll = 0.
        yaw = torch.where(gimbal, torch.atan2(-r[..., 2, 0], r[..., 0, 0]), yaw)
        roll = torch.where(gimbal, torch.zeros_like(roll), roll)
    return yaw, pitch, roll


def is_rotation(rotation: Tensor, atol: float = 1e-5) -> bool:
    """True when every matrix in (..., 3, 3) is orthonormal with determinant +1."""
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    orthonormal = torch.allclose(rotation @ rotation.transpose(-1, -2), eye.expand_as(rotation), atol=atol)
    return orthonormal and bool((torch.linalg.det(rotation) > 0).all())
