"""Dataset normals into our world frame, and how well they agree with the panorama's depth.

Datasets store normals in their own frames: ours already (synthetic rooms, Replica), a fixed
z-up frame tied to the panorama (Structured3D), or a building's global frame whose heading
differs per panorama (Stanford2D3D). `to_world_frame` applies the reader's `NormalsFrame`,
fits the missing yaw from the normals of the depth when the frame asks for it, and turns
every normal towards the camera (docs/conventions.md). It also measures the median angle
between the converted normals and the normals of the depth (`spherical.depth`) over the
wall-like pixels, where a wrong heading or a wrong vertical axis shows, so a frame convention
that is wrong for a dataset fails loudly instead of passing silently.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from spherical.depth import normals_from_erp_range, orient_towards
from spherical.erp import erp_lonlat, erp_rays
from spherical.rotation import yaw_matrix
from storage.groundtruth import resample_to_labels
from storage.importers.base import DatasetError, NormalsFrame

FIT_INLIER_DEG = 30.0  # second pass of the yaw fit: pixels within this of the first fit
# The yaw fit and the agreement with the depth run on the maps area-averaged to at most this
# many rows: a median over 256 x 512 pixels is as telling as over millions, 16x cheaper at 1024.
CHECK_HEIGHT = 256
# Wall-like pixels: a depth normal closer to horizontal than to vertical (|n_y| < cos 45°).
WALL_MAX_VERTICAL = math.cos(math.radians(45.0))


def depth_normals(depth: np.ndarray) -> np.ndarray:
    """(3,H,W) float64 unit normals of an (H,W) range map (NaN where undefined), world frame."""
    range_ = torch.from_numpy(np.asarray(depth, dtype=np.float64))[None]  # (1,H,W)
    return normals_from_erp_range(range_)[0].numpy()


def _cos_latitude(height: int) -> np.ndarray:
    """(H,1) cos(latitude) of each ERP row: the solid-angle weight of its pixels."""
    _, lat = erp_lonlat(height, dtype=torch.float64)  # (H,)
    return torch.cos(lat).numpy()[:, None]


def _axial_score(psi: np.ndarray, sums: dict[str, float]) -> np.ndarray:
    """sum w (a . R_yaw(psi) b)^2 for each yaw in `psi`, from the pixel sums of `_yaw_sums`."""
    c, s = np.cos(psi), np.sin(psi)
    return c * c * sums["cc"] + s * s * sums["ss"] + 2 * c * s * sums["cs"] + 2 * c * sums["cy"] + 2 * s * sums["sy"]


def _yaw_sums(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """With R_yaw = [[c,0,s],[0,1,0],[-s,0,c]], a . R b = c C + s S + Y for C = a_x b_x + a_z b_z,
    S = a_x b_z - a_z b_x, Y = a_y b_y; the weighted sums that (a . R b)^2 needs. a, b: (3,n)."""
    C = a[0] * b[0] + a[2] * b[2]
    S = a[0] * b[2] - a[2] * b[0]
    Y = a[1] * b[1]
    return {
        "cc": float(np.sum(w * C * C)),
        "ss": float(np.sum(w * S * S)),
        "cs": float(np.sum(w * C * S)),
        "cy": float(np.sum(w * C * Y)),
        "sy": float(np.sum(w * S * Y)),
    }


def fit_yaw(normals: np.ndarray, reference: np.ndarray) -> float:
    """The yaw psi (radians) that best turns the axes of `normals` onto those of `reference`.

    Maximises sum w (a . R_yaw(psi) b)^2 over the pixels where both are defined (w = cos
    latitude): axial, so normals that face away from the camera (meshes with inconsistent
    orientation) count like the others (`to_world_frame` turns them afterwards). Of psi and
    psi + 180° (the same axes), the one under which the fitted pixels mostly point the way the
    reference does is returned. The score is a trigonometric
    polynomial in psi with five coefficients, searched on a 0.1° grid and refined to 0.001°; a
    second pass keeps the pixels within FIT_INLIER_DEG of the first fit's axes (depth edges and
    clutter give wrong reference normals).

    Args:
        normals: (3,H,W) unit normals, right up to a yaw; NaN = none.
        reference: (3,H,W) unit normals in our frame (from depth); NaN = none.
    Raises:
        DatasetError: no pixel has both.
    """
    both = np.isfinite(normals).all(0) & np.isfinite(reference).all(0)  # (H,W)
    if not both.any():
        raise DatasetError("no pixel has both a normal and a depth normal: the normals' heading cannot be fitted")
    weight = np.broadcast_to(_cos_latitude(normals.shape[1]), both.shape)[both]  # (n,)
    a, b = reference[:, both], normals[:, both]  # (3,n) each
    keep = np.ones(a.shape[1], bool)
    psi = 0.0
    for _ in range(2):
        sums = _yaw_sums(a, b, weight * keep)
        grid = np.radians(np.arange(-180.0, 180.0, 0.1))
        coarse = grid[np.argmax(_axial_score(grid, sums))]
        fine = coarse + np.radians(np.arange(-0.1, 0.1, 0.001))
        psi = float(fine[np.argmax(_axial_score(fine, sums))])
        turned = yaw_matrix(psi).double().numpy() @ b  # (3,n)
        inliers = np.abs((a * turned).sum(0)) > math.cos(math.radians(FIT_INLIER_DEG))
        if not inliers.any():
            break
        keep = inliers
    # The axes fit; their sign picks psi or psi + 180°: the one under which most normals point
    # the way the depth's normals do (towards the camera).
    turned = yaw_matrix(psi).double().numpy() @ b  # (3,n)
    if np.sum(weight * keep * (a * turned).sum(0)) < 0:
        psi += math.pi
    return math.remainder(psi, 2 * math.pi)


def to_world_frame(
    normals: np.ndarray, depth: np.ndarray | None, frame: NormalsFrame
) -> tuple[np.ndarray, dict[str, Any]]:
    """Dataset normals on the store's grid -> our world frame, facing the camera.

    Args:
        normals: (3,H,W) unit normals in the dataset's frame, NaN = none.
        depth: (H,W) range in metres on the same grid (NaN = none), or None.
        frame: the reader's `NormalsFrame`.
    Returns:
        (3,H,W) float32 unit normals in our frame and the row figures:
        `normals_yaw_deg` (fitted frames only), `normals_flipped` (share of the normals that
        faced away from the camera and were turned), `normals_depth_walls_deg` (median angle
        to the normals of the depth over wall-like pixels, with depth only; None without any).
    """
    n = np.einsum("ab,bhw->ahw", frame.as_array(), normals.astype(np.float64))  # (3,H,W)
    figures: dict[str, Any] = {}
    check = min(n.shape[1], CHECK_HEIGHT)
    reference = depth_normals(resample_to_labels("depth", depth, check)) if depth is not None else None
    if frame.fit_yaw:
        if reference is None:
            raise DatasetError("the normals' heading is fitted to the depth, and this panorama has no depth")
        psi = fit_yaw(resample_to_labels("normals", n, check), reference)
        if frame.yaw_step_deg is not None:
            step = math.radians(frame.yaw_step_deg)
            psi = round(psi / step) * step
        n = np.einsum("ab,bhw->ahw", yaw_matrix(psi).double().numpy(), n)  # (3,H,W)
        figures["normals_yaw_deg"] = math.degrees(psi)
    turned = facing_camera(n)
    valid = np.isfinite(n).all(0)
    flipped = valid & (turned != n).any(0)
    figures["normals_flipped"] = float(flipped.sum() / max(int(valid.sum()), 1))
    if reference is not None:
        # The reference faces the camera: compare with the turned normals at the check size,
        # over wall-like pixels (floors and ceilings agree whatever the heading, and would
        # hide a wrong one in a median over every pixel).
        cos = np.clip((facing_camera(resample_to_labels("normals", turned, check)) * reference).sum(0), -1.0, 1.0)
        walls = np.isfinite(cos) & (np.abs(reference[1]) < WALL_MAX_VERTICAL)
        median = np.degrees(np.arccos(np.median(cos[walls]))) if walls.any() else None
        figures["normals_depth_walls_deg"] = None if median is None else float(median)
    return turned.astype(np.float32), figures


def facing_camera(normals: np.ndarray) -> np.ndarray:
    """(3,H,W) normals turned towards the camera (n . d < 0 for the pixel's ray d)."""
    rays = erp_rays(normals.shape[1], dtype=torch.float64).permute(2, 0, 1)[None]  # (H,W,3) -> (1,3,H,W)
    return orient_towards(torch.from_numpy(normals.astype(np.float64))[None], rays)[0].numpy()  # (3,H,W)
