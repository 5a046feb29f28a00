"""Every formula of docs/conventions.md, checked numerically (float32 and float64)."""

from __future__ import annotations

import math

import pytest
import torch

from spherical.camera import PatchCameras, focal_from_fov
from spherical.erp import (
    erp_lonlat,
    erp_rays,
    lonlat_grid_to_ray,
    lonlat_to_pixel,
    lonlat_to_ray,
    pixel_to_lonlat,
    ray_to_lonlat,
    solid_angle_weights,
)
from spherical.rotation import (
    is_rotation,
    matrix_to_ypr,
    pitch_matrix,
    roll_matrix,
    yaw_matrix,
    ypr_to_matrix,
)

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_erp_pixel_centres_longitude_latitude(dtype):
    H = 8
    lon, lat = erp_lonlat(H, dtype=dtype)
    W = 2 * H
    assert lon.shape == (W,) and lat.shape == (H,) and lon.dtype == dtype
    # phi = 2 pi (u + 0.5) / W - pi; theta = pi/2 - pi (v + 0.5) / H
    assert lon[0].item() == pytest.approx(-math.pi + math.pi / W)
    assert lon[-1].item() == pytest.approx(math.pi - math.pi / W)
    assert lat[0].item() == pytest.approx(math.pi / 2 - math.pi / (2 * H))
    assert lat[-1].item() == pytest.approx(-math.pi / 2 + math.pi / (2 * H))
    # The centre column boundary x = W/2 is longitude 0; the left edge is -pi; top edge +pi/2.
    x = torch.tensor([0.0, W / 2.0], dtype=dtype)
    y = torch.tensor([0.0, H / 2.0], dtype=dtype)
    lon_e, lat_e = pixel_to_lonlat(x, y, H)
    assert lon_e.tolist() == pytest.approx([-math.pi, 0.0])
    assert lat_e.tolist() == pytest.approx([math.pi / 2, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ray_formula_and_axes(dtype):
    # d(phi, theta) = (cos theta sin phi, -sin theta, cos theta cos phi)
    phi = torch.tensor([0.0, math.pi / 2, 0.0, 0.0, 0.7], dtype=dtype)
    theta = torch.tensor([0.0, 0.0, math.pi / 2, -math.pi / 2, -0.3], dtype=dtype)
    d = lonlat_to_ray(phi, theta)
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0],  # forward
            [1.0, 0.0, 0.0],  # right is phi = +pi/2
            [0.0, -1.0, 0.0],  # up is -y
            [0.0, 1.0, 0.0],  # down is +y
            [math.cos(-0.3) * math.sin(0.7), -math.sin(-0.3), math.cos(-0.3) * math.cos(0.7)],
        ],
        dtype=dtype,
    )
    torch.testing.assert_close(d, expected, atol=1e-6, rtol=0)
    lon, lat = ray_to_lonlat(d[[0, 1, 4]] * 3.0)  # not unit length on purpose
    torch.testing.assert_close(lon, phi[[0, 1, 4]], atol=1e-6, rtol=0)
    torch.testing.assert_close(lat, theta[[0, 1, 4]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_erp_rays_are_unit_and_match_pixels(dtype):
    H = 16
    rays = erp_rays(H, dtype=dtype)
    assert rays.shape == (H, 2 * H, 3)
    torch.testing.assert_close(torch.linalg.vector_norm(rays, dim=-1), torch.ones(H, 2 * H, dtype=dtype))
    lon, lat = ray_to_lonlat(rays)
    x, y = lonlat_to_pixel(lon, lat, H)
    u = torch.arange(2 * H, dtype=dtype) + 0.5
    v = torch.arange(H, dtype=dtype) + 0.5
    torch.testing.assert_close(x, u.expand(H, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(y, v[:, None].expand(-1, 2 * H), atol=1e-4, rtol=0)


def test_longitude_wraps_at_the_right_edge():
    x, _ = lonlat_to_pixel(torch.tensor([math.pi, -math.pi, 3 * math.pi]), torch.zeros(3), 4)
    assert x.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)


def test_solid_angles_sum_to_sphere():
    for H in (4, 37, 256):
        w = solid_angle_weights(H, dtype=torch.float64)
        assert float(w.sum()) * 2 * H == pytest.approx(4 * math.pi, rel=1e-12)
        assert w[0] < w[H // 2]  # pole rows are smaller than equator rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementary_rotations_match_conventions(dtype):
    a = 0.4
    c, s = math.cos(a), math.sin(a)
    t = torch.tensor(a, dtype=dtype)
    torch.testing.assert_close(yaw_matrix(t), torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype))
    torch.testing.assert_close(pitch_matrix(t), torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=dtype))
    torch.testing.assert_close(roll_matrix(t), torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_optical_axis_is_erp_ray_of_yaw_pitch(dtype):
    g = torch.Generator().manual_seed(0)
    yaw = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    pitch = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * (math.pi / 2 - 1e-3)
    roll = (torch.rand(200, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    R = ypr_to_matrix(yaw.to(dtype), pitch.to(dtype), roll.to(dtype))
    assert R.dtype == dtype and is_rotation(R, atol=1e-5)
    axis = R[:, :, 2]  # R e_z, whatever the roll
    torch.testing.assert_close(axis, lonlat_to_ray(yaw, pitch).to(dtype), atol=1e-5, rtol=0)


def test_turn_directions():
    deg = math.radians
    # Positive yaw turns right: at yaw 90 the camera looks along +x.
    torch.testing.assert_close(ypr_to_matrix(deg(90), 0.0)[:, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    # Positive pitch looks up: at pitch 90 the camera looks along -y (up).
    torch.testing.assert_close(ypr_to_matrix(0.0, deg(90))[:, 2], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    # Positive roll turns the camera's right axis (x) towards world down (+y).
    torch.testing.assert_close(ypr_to_matrix(0.0, 0.0, deg(90))[:, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_to_ypr_inverts(dtype):
    g = torch.Generator().manual_seed(1)
    yaw = (torch.rand(100, generator=g) * 2 - 1) * math.pi * 0.999
    pitch = (torch.rand(100, generator=g) * 2 - 1) * math.pi / 2 * 0.98
    roll = (torch.rand(100, generator=g) * 2 - 1) * math.pi * 0.999
    R = ypr_to_matrix(yaw.to(dtype), pitch.to(dtype), roll.to(dtype))
    y2, p2, r2 = matrix_to_ypr(R)
    torch.testing.assert_close(ypr_to_matrix(y2, p2, r2), R, atol=1e-5, rtol=0)
    torch.testing.assert_close(p2, pitch.to(dtype), atol=1e-4, rtol=0)
    # At the pole yaw and roll merge; the rotation is still reproduced.
    R_pole = ypr_to_matrix(
        torch.tensor(0.3, dtype=dtype), torch.tensor(math.pi / 2, dtype=dtype), torch.tensor(0.2, dtype=dtype)
    )
    torch.testing.assert_close(ypr_to_matrix(*matrix_to_ypr(R_pole)), R_pole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pinhole_rays_and_intrinsics(dtype):
    cams = PatchCameras.from_ypr([0.0], [0.0], fov_x_deg=90.0, height=4, width=6, dtype=dtype)
    f = 3.0 / math.tan(math.radians(45.0))  # (w/2) / tan(fov/2)
    assert cams.focal.item() == pytest.approx(f)
    assert focal_from_fov(90.0, 6).item() == pytest.approx(f)
    rays = cams.camera_rays()
    # c = ((j + 0.5 - w/2)/f, (i + 0.5 - h/2)/f, 1) for pixel (i, j) = (1, 4)
    torch.testing.assert_close(rays[0, 1, 4], torch.tensor([(4.5 - 3.0) / f, (1.5 - 2.0) / f, 1.0], dtype=dtype))
    # K maps the ray back to the pixel centre.
    pix = cams.intrinsics()[0] @ rays[0, 1, 4]
    torch.testing.assert_close(pix, torch.tensor([4.5, 1.5, 1.0], dtype=dtype))
    assert cams.fov_y_deg.item() == pytest.approx(2 * math.degrees(math.atan(2.0 / f)))
    # Vertical rows go down the image: row 3 looks below row 0 (positive camera y).
    assert rays[0, 3, 0, 1] > rays[0, 0, 0, 1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_world_rays_and_projection_are_inverse(dtype):
    cams = PatchCameras.from_ypr(
        [30.0, -170.0], [20.0, -80.0], [5.0, 0.0], fov_x_deg=[70.0, 100.0], height=9, width=11, dtype=dtype
    )
    world = cams.world_rays()  # (N,h,w,3)
    x, y, z = cams.project(world)
    assert bool((z > 0).all())
    j = torch.arange(11, dtype=dtype) + 0.5
    i = torch.arange(9, dtype=dtype) + 0.5
    torch.testing.assert_close(x, j.expand(2, 9, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(y, i[:, None].expand(2, -1, 11), atol=1e-4, rtol=0)
    # With odd sizes the centre pixel (4, 5) looks exactly along the optical axis R e_z.
    torch.testing.assert_close(world[:, 4, 5], cams.optical_axes(), atol=1e-6, rtol=0)


def test_camera_validation_errors():
    with pytest.raises(ValueError, match="fov_x_deg"):
        PatchCameras.from_ypr([0.0], [0.0], fov_x_deg=180.0, height=4, width=4)
    with pytest.raises(ValueError, match="rotation"):
        PatchCameras(torch.eye(3), torch.tensor([90.0]), 4, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lonlat_grid_rays_equal_the_ray_formula(dtype):
    lon, lat = erp_lonlat(12, dtype=dtype)
    grid = lonlat_grid_to_ray(lon, lat)  # (H,W,3)
    assert grid.shape == (12, 24, 3) and grid.dtype == dtype
    torch.testing.assert_close(grid, lonlat_to_ray(lon[None, :], lat[:, None]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separable_world_directions_are_R_times_camera_rays(dtype):
    """d = R[:,0] a_j + R[:,1] b_i + R[:,2] is R c for c = (a_j, b_i, 1), pixel by pixel."""
    cams = PatchCameras.from_ypr(
        [30.0, -170.0, 90.0],
        [20.0, -80.0, 89.0],
        [5.0, 0.0, -40.0],
        fov_x_deg=[70.0, 100.0, 60.0],
        height=9,
        width=12,
        dtype=dtype,
    )
    dx, dy, dz = cams.world_directions()
    assert dx.shape == (3, 9, 12) and dx.dtype == dtype
    directions = torch.stack((dx, dy, dz), -1)  # (N,h,w,3)
    expected = torch.einsum("nab,nhwb->nhwa", cams.rotation, cams.camera_rays())  # (N,h,w,3)
    torch.testing.assert_close(directions, expected, atol=1e-6, rtol=0)
    # Not unit: their lengths are the camera-ray lengths ||c|| (range = z-depth * ||c||).
    torch.testing.assert_close(torch.linalg.vector_norm(directions, dim=-1), cams.ray_norms())
    rays = cams.world_rays()
    torch.testing.assert_close(torch.linalg.vector_norm(rays, dim=-1), torch.ones(3, 9, 12, dtype=dtype))
    torch.testing.assert_close(rays, expected / cams.ray_norms()[..., None])
