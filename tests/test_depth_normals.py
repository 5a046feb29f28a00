"""Depth kinds, normal frames, normals from depth; checked against the real Replica data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import angle_between

from spherical.camera import PatchCameras
from spherical.depth import (
    camera_to_world_normals,
    normals_from_erp_range,
    normals_from_zdepth,
    range_to_zdepth,
    world_to_camera_normals,
    zdepth_to_range,
)
from spherical.erp import erp_rays
from storage.groundtruth import read_depth, read_normals


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_range_is_zdepth_times_ray_length(dtype):
    cams = PatchCameras.from_ypr([10.0], [0.0], fov_x_deg=90.0, height=2, width=2, dtype=dtype)
    z = torch.full((1, 2, 2), 2.0, dtype=dtype)
    r = zdepth_to_range(z, cams)
    # f = 1 px for w = 2 at 90 degrees: corner rays c = (+-0.5, +-0.5, 1), ||c|| = sqrt(1.5).
    torch.testing.assert_close(r, torch.full((1, 2, 2), 2.0 * math.sqrt(1.5), dtype=dtype))
    torch.testing.assert_close(range_to_zdepth(r, cams), z)


def test_normals_rotate_between_frames():
    cams = PatchCameras.from_ypr([30.0, -100.0], [20.0, 60.0], [5.0, -10.0], fov_x_deg=60.0, height=3, width=3)
    n_cam = torch.nn.functional.normalize(torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    n_world = camera_to_world_normals(n_cam, cams.rotation)
    # n_world = R n_cam for every pixel
    torch.testing.assert_close(n_world[:, :, 1, 2], torch.einsum("nab,nb->na", cams.rotation, n_cam[:, :, 1, 2]))
    torch.testing.assert_close(world_to_camera_normals(n_world, cams.rotation), n_cam, atol=1e-6, rtol=0)


def test_normals_of_a_box_room_from_range():
    """A room seen from inside: floor (0,-1,0), ceiling (0,1,0), walls axis-aligned."""
    H = 128
    rays = erp_rays(H, dtype=torch.float64)
    lo = torch.tensor([-2.0, -1.2, -3.0], dtype=torch.float64)  # x_min, ceiling y, z_min
    hi = torch.tensor([4.0, 1.5, 2.5], dtype=torch.float64)  # x_max, floor y, z_max
    t = torch.where(rays > 0, hi / rays, torch.where(rays < 0, lo / rays, torch.inf)).amin(-1)  # (H,W)
    normals = normals_from_erp_range(t[None])[0]  # (3,H,W)
    floor = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    assert float(angle_between(normals[:, -1].T, floor).max()) < 1e-6  # bottom row is floor
    assert float(angle_between(normals[:, 0].T, -floor).max()) < 1e-6  # top row is ceiling
    facing = (normals * rays.permute(2, 0, 1)).sum(0)
    assert bool((facing < 0).all())  # every normal faces the camera
    # Away from the room's edges every normal is one of the six axis directions.
    axis_aligned = normals.abs().amax(0)
    assert float((axis_aligned > 1 - 1e-9).double().mean()) > 0.97


def test_zdepth_normals_of_a_tilted_plane():
    cams = PatchCameras.from_ypr([0.0], [0.0], fov_x_deg=70.0, height=32, width=40, dtype=torch.float64)
    rays = cams.camera_rays()[0]  # (h,w,3), c_z = 1
    n_true = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, -1.0], dtype=torch.float64), dim=0)
    # Plane n . X = -2 (in front of the camera): z * (n . c) = -2.
    z = (-2.0 / (rays @ n_true))[None]
    n = normals_from_zdepth(z, cams)[0]
    assert float(angle_between(n.permute(1, 2, 0), n_true).max()) < 1e-9


def _replica(real_data, name):
    depth = read_depth(real_data / "replica" / f"{name}_depth.png")
    normals = read_normals(real_data / "replica" / f"{name}_normals.png")
    return torch.from_numpy(depth).double(), torch.from_numpy(normals).double()


@pytest.mark.parametrize("name", ["0006", "0009", "0010"])
def test_replica_normals_from_depth_match_stored_normals(real_data, name):
    """Our rays on real range maps give normals that agree with Replica's stored normals.

    The stored normals agree on floors and ceilings as they are, which is over half of every
    panorama (median cosine >= 0.98). On walls they differ by one rotation about the
    vertical per panorama: they are stored in the scene's frame, yawed against the
    panorama's. After that single yaw is fitted, all surfaces agree (mean cosine >= 0.99).
    """
    depth, stored = _replica(real_data, name)
    ours = normals_from_erp_range(depth[None])[0]  # (3,H,W)
    valid = torch.isfinite(ours).all(0) & torch.isfinite(stored).all(0)
    assert float(valid.double().mean()) > 0.95
    a, b = ours[:, valid], stored[:, valid]  # (3,M)
    cos = (a * b).sum(0)
    assert float(cos.median()) >= 0.98
    # Vertical components agree as stored: the frames share the up axis.
    assert float(torch.corrcoef(torch.stack((a[1], b[1])))[0, 1]) > 0.99
    # The best yaw aligning our normals with the stored ones, in closed form.
    yaw = math.atan2(float((b[0] * a[2] - b[2] * a[0]).sum()), float((b[0] * a[0] + b[2] * a[2]).sum()))
    c, s = math.cos(yaw), math.sin(yaw)
    aligned = torch.stack((c * a[0] + s * a[2], a[1], -s * a[0] + c * a[2]))
    cos_aligned = (aligned * b).sum(0)
    assert float(cos_aligned.mean()) >= 0.99
    assert float(cos_aligned.median()) >= 0.995


def test_replica_range_maps_are_plausible(real_data):
    depth, _ = _replica(real_data, "0006")
    assert depth.shape == (1024, 2048)
    finite = depth[torch.isfinite(depth)]
    assert float(finite.min()) > 0.1 and float(finite.max()) < 16.0
    assert np.isfinite(float(finite.median()))
