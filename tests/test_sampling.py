"""ERP -> patch sampling: exact rays, no seam at +-180 degrees, no fold at the poles."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import angle_between, erp_pixel_angle

from spherical import sampling
from spherical.camera import PatchCameras
from spherical.erp import erp_rays, lonlat_to_pixel, ray_to_lonlat
from spherical.sampling import (
    erp_sampling_grid,
    erp_to_patches,
    pad_erp,
    pad_samples,
    padded_buffer,
    patches_from_padded,
)

# Cameras at the seam (yaw 180), at both poles, tilted and rolled, and ordinary ones.
YAW = [0.0, 180.0, -179.0, 45.0, 120.0, 0.0, -60.0]
PITCH = [0.0, 0.0, 30.0, 90.0, -90.0, 89.0, -70.0]
ROLL = [0.0, 0.0, 15.0, 0.0, 0.0, 30.0, -20.0]


def smooth_map(rays: torch.Tensor) -> torch.Tensor:
    """A smooth function on the sphere: (..., 3) rays -> (..., 2) values (no seam, no pole)."""
    x, y, z = rays.unbind(-1)
    return torch.stack((x + 0.5 * y * z, torch.sin(2.0 * x) + z * z - y), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampled_rays_equal_camera_rays(dtype):
    """Sampling the ERP ray map gives each patch pixel its own camera ray, everywhere."""
    H = 256
    erp = erp_rays(H, dtype=dtype).permute(2, 0, 1)[None]  # (1,3,H,W)
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=80.0, height=48, width=64, dtype=dtype)
    patches = erp_to_patches(erp, cams)
    assert patches.shape == (1, len(YAW), 3, 48, 64) and patches.dtype == dtype
    err = angle_between(patches[0].permute(0, 2, 3, 1), cams.world_rays())
    # Bilinear interpolation of a unit vector field: well below 1% of an ERP pixel.
    assert float(err.max()) < 0.01 * erp_pixel_angle(H)


def test_seam_and_poles_match_the_analytic_map():
    """A smooth map sampled across +-180 degrees and over the poles has no seam or fold."""
    H = 512
    erp = smooth_map(erp_rays(H, dtype=torch.float64)).permute(2, 0, 1)[None]  # (1,2,H,W)
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=90.0, height=64, width=64, dtype=torch.float64)
    patches = erp_to_patches(erp, cams)[0]  # (N,2,h,w)
    expected = smooth_map(cams.world_rays()).permute(0, 3, 1, 2)
    err = (patches - expected).abs().amax(dim=(1, 2, 3))
    # The map changes by up to ~0.02 per ERP pixel; interpolation error stays far below that.
    assert float(err.max()) < 2e-4, err
    # Without spherical padding the seam and pole patches would be off by orders more:
    no_wrap = torch.nn.functional.grid_sample(
        erp, _plain_grid(cams, H), mode="bilinear", padding_mode="border", align_corners=False
    )
    seam_err = (no_wrap[0, :, :64] - expected[1]).abs().max()  # camera 1 straddles the seam
    assert float(seam_err) > 50 * float(err[1])


def _plain_grid(cams: PatchCameras, H: int) -> torch.Tensor:
    lon, lat = ray_to_lonlat(cams.world_rays())
    x, y = lonlat_to_pixel(lon, lat, H)
    grid = torch.stack((2 * x / (2 * H) - 1, 2 * y / H - 1), -1)
    return grid.flatten(0, 1)[None]


def test_nearest_labels_come_from_the_pixel_containing_the_ray():
    H = 64
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 150, (1, 1, H, 2 * H), generator=g, dtype=torch.int64).to(torch.uint8)
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=70.0, height=32, width=32, dtype=torch.float64)
    out = erp_to_patches(labels, cams, mode="nearest")
    assert out.dtype == torch.uint8
    lon, lat = ray_to_lonlat(cams.world_rays())
    x, y = lonlat_to_pixel(lon, lat, H)
    u = torch.floor(x).long() % (2 * H)
    v = torch.floor(y).long().clamp(0, H - 1)
    expected = labels[0, 0][v, u]
    # A ray on a pixel border (the pole camera has whole columns of them) may go either way.
    clear = ((x - x.round()).abs() > 1e-6) & ((y - y.round()).abs() > 1e-6)
    assert int(clear.sum()) > 0.9 * clear.numel()
    assert bool((out[0, :, 0] == expected)[clear].all())


def test_pad_erp_neighbours():
    H = 4
    erp = torch.arange(2 * H * H, dtype=torch.float32).view(1, 1, H, 2 * H)
    p = pad_erp(erp)[0, 0]
    assert p.shape == (H + 2, 2 * H + 2)
    assert torch.equal(p[1:-1, 0], erp[0, 0, :, -1]) and torch.equal(p[1:-1, -1], erp[0, 0, :, 0])
    # Above row 0 at column u is row 0 at column u + W/2.
    assert torch.equal(p[0, 1:-1], torch.roll(erp[0, 0, 0], H))
    assert torch.equal(p[-1, 1:-1], torch.roll(erp[0, 0, -1], H))


def test_pad_erp_corners_and_batches():
    g = torch.Generator().manual_seed(3)
    erp = torch.rand(2, 3, 6, 12, generator=g)
    p = pad_erp(erp)
    assert p.shape == (2, 3, 8, 14)
    torch.testing.assert_close(p[:, :, 1:-1, 1:-1], erp, rtol=0, atol=0)
    # The corners wrap the pole rows in longitude too.
    torch.testing.assert_close(p[..., 0], p[..., -2], rtol=0, atol=0)
    torch.testing.assert_close(p[..., -1], p[..., 1], rtol=0, atol=0)
    torch.testing.assert_close(p[:, :, 0, 0], erp[:, :, 0, 5], rtol=0, atol=0)  # (0, W-1) rolled by W/2


@pytest.mark.parametrize(("dtype", "scale"), [(torch.uint8, 255.0), (torch.int32, 65535.0), (torch.uint16, 65535.0)])
def test_pad_samples_is_pad_erp_of_the_unit_image(dtype, scale):
    """Decoded samples (H,W,3), padded and scaled into a reused buffer, equal `pad_erp` of the
    float image exactly (values and borders); their patches equal `erp_to_patches` of the float
    image."""
    H = 16
    g = torch.Generator().manual_seed(4)
    samples = torch.randint(0, int(scale) + 1, (H, 2 * H, 3), generator=g, dtype=torch.int32).to(dtype)
    unit = samples.permute(2, 0, 1)[None].float() / scale  # (H,W,3) -> (1,3,H,W)
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=75.0, height=9, width=11)
    # Planar or channels-last memory (the default, `padded_buffer`): the same values.
    for buffer in (torch.full((1, 3, H + 2, 2 * H + 2), math.nan), padded_buffer(H, 3).fill_(math.nan)):
        assert pad_samples(samples, scale, out=buffer) is buffer
        assert torch.equal(buffer, pad_erp(unit))
        assert float(buffer.min()) >= 0.0 and float(buffer.max()) <= 1.0
        assert torch.equal(patches_from_padded(buffer, cams), erp_to_patches(unit, cams))
    assert pad_samples(samples, scale).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="out must be"):
        pad_samples(samples, scale, out=buffer[:, :, 1:])
    with pytest.raises(ValueError, match="2:1"):
        pad_samples(samples[:, 1:], scale)
    with pytest.raises(ValueError, match="integers"):
        pad_samples(unit[0].permute(1, 2, 0), scale)  # (3,H,W) -> (H,W,3) floats


def test_sampling_grid_is_the_convention_chain():
    """The fused grid equals rays -> (lon, lat) -> ERP pixel -> padded grid_sample coordinates;
    at lon = +-pi the two may differ by exactly one ERP width, which the padding makes equal."""
    H, W = 64, 128
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=80.0, height=31, width=33, dtype=torch.float64)
    grid = erp_sampling_grid(cams, H)  # (N*h,w,2)
    lon, lat = ray_to_lonlat(cams.world_rays())
    x, y = lonlat_to_pixel(lon, lat, H)
    x_grid = (grid[..., 0] + 1.0) * (W + 2) / 2.0 - 1.0  # back to ERP pixel coordinates
    y_grid = (grid[..., 1] + 1.0) * (H + 2) / 2.0 - 1.0
    dx = (x_grid - x.flatten(0, 1)).abs()
    assert float(torch.minimum(dx, (dx - W).abs()).max()) < 1e-9
    assert float((y_grid - y.flatten(0, 1)).abs().max()) < 1e-9
    assert float((dx - W).abs().min()) < 1e-9  # the seam camera's centre column is at lon = pi
    # In the padded image's pixels (centres at 0 .. W+1) every point lies half a pixel inside
    # the outer centres (up to rounding): no bilinear read leaves the image, whatever the
    # padding mode (`patches_from_padded` uses "zeros").
    for padded_pixel, size in ((x_grid + 0.5, W + 2), (y_grid + 0.5, H + 2)):
        assert float(padded_pixel.min()) >= 0.5 - 1e-9 and float(padded_pixel.max()) <= size - 1.5 + 1e-9


def test_batches_and_chunks_match_one_plain_grid_sample(monkeypatch):
    """B images at once, in chunks of patches or not, equal grid_sample on the documented grid."""
    H = 32
    g = torch.Generator().manual_seed(1)
    erp = torch.rand(2, 3, H, 2 * H, generator=g, dtype=torch.float64)
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=75.0, height=12, width=10, dtype=torch.float64)
    plain = torch.nn.functional.grid_sample(
        pad_erp(erp), erp_sampling_grid(cams, H)[None].expand(2, -1, -1, -1), align_corners=False
    )  # (B,C,N*h,w)
    expected = plain.unflatten(2, (len(cams), 12)).transpose(1, 2)  # (B,N,C,h,w)
    whole = erp_to_patches(erp, cams)
    monkeypatch.setattr(sampling, "_CHUNK_PIXELS", 1)  # one thread-count of patches per call
    chunked = erp_to_patches(erp, cams)
    assert whole.shape == (2, len(cams), 3, 12, 10)
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(erp_to_patches(erp[1:], cams[2:5])[0], expected[1, 2:5], rtol=0, atol=1e-12)
    # Into a caller's buffer: the same values, in that memory.
    buffer = torch.full((2, len(cams), 3, 12, 10), math.nan, dtype=torch.float64)
    assert erp_to_patches(erp, cams, out=buffer) is buffer
    torch.testing.assert_close(buffer, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="out must be"):
        erp_to_patches(erp, cams, out=buffer[:1])
    with pytest.raises(ValueError, match="out must be"):
        erp_to_patches(erp, cams, out=buffer.float())


def test_half_precision_input_keeps_float32_geometry():
    H = 128
    erp = erp_rays(H).permute(2, 0, 1)[None]
    cams = PatchCameras.from_ypr([10.0], [5.0], fov_x_deg=60.0, height=16, width=16)
    half = erp_to_patches(erp.half(), cams)
    full = erp_to_patches(erp, cams)
    assert half.dtype == torch.float16
    assert float((half.float() - full).abs().max()) < 2e-3  # fp16 storage, not geometry, error


def test_bad_inputs_raise():
    cams = PatchCameras.from_ypr([0.0], [0.0], fov_x_deg=60.0, height=8, width=8)
    with pytest.raises(ValueError, match="2:1"):
        erp_to_patches(torch.zeros(1, 3, 10, 30), cams)
    with pytest.raises(ValueError, match="nearest"):
        erp_to_patches(torch.zeros(1, 1, 8, 16, dtype=torch.uint8), cams)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    H = 128
    erp = erp_rays(H).permute(2, 0, 1)[None]
    cams = PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=80.0, height=32, width=32)
    cpu = erp_to_patches(erp, cams)
    gpu = erp_to_patches(erp.cuda(), cams.to("cuda"))
    assert gpu.device.type == "cuda"
    assert float((gpu.cpu() - cpu).abs().max()) < 1e-5
    assert math.isfinite(float(gpu.sum()))
