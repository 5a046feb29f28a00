"""Perspective -> ERP re-projection: exact footprints, sub-pixel round trips, fusion helpers."""

from __future__ import annotations

import pytest
import torch
from conftest import angle_between, erp_pixel_angle
from test_sampling import PITCH, ROLL, YAW

from spherical.camera import PatchCameras
from spherical.erp import erp_rays, erp_width
from spherical.layouts import icosahedron_layout
from spherical.reproject import patch_to_erp, patches_to_erp
from spherical.sampling import erp_to_patches


def _cameras(dtype=torch.float64, size=96, fov=90.0):
    return PatchCameras.from_ypr(YAW, PITCH, ROLL, fov_x_deg=fov, height=size, width=size + 16, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_erp_patch_erp_is_subpixel_everywhere(dtype):
    """ERP -> patch -> ERP of the ray map: < 0.1 ERP px inside every footprint, including
    patches across +-180 degrees and on both poles."""
    H = 256
    cams = _cameras(dtype)
    erp = erp_rays(H, dtype=dtype).permute(2, 0, 1)[None]  # (1,3,H,W)
    patches = erp_to_patches(erp, cams)[0]  # (N,3,h,w)
    mapping = patch_to_erp(cams, H)
    back = mapping.sample(patches)  # (3,M)
    truth = erp[0].flatten(1)[:, mapping.erp_index]  # (3,M)
    err_px = angle_between(back, truth, dim=0) / erp_pixel_angle(H)
    assert float(err_px.max()) < 0.1
    for n in (1, 3, 4):  # the seam and the two pole cameras have entries and are exact
        sl = mapping.entries_of(n)
        assert sl.stop - sl.start > 1000 and float(err_px[sl].max()) < 0.1


def test_footprints_find_exactly_the_pixels_a_brute_force_pass_finds():
    H = 96
    W = erp_width(H)
    cams = _cameras(torch.float64, size=48, fov=75.0)
    mapping = patch_to_erp(cams, H)
    rays = erp_rays(H, dtype=torch.float64).reshape(1, -1, 3).expand(len(cams), -1, -1)
    x, y, z = cams.project(rays)  # (N,H*W) every ERP pixel in every camera
    h, w = cams.height, cams.width
    seen = (z > 0) & (x >= 0.5) & (x <= w - 0.5) & (y >= 0.5) & (y <= h - 0.5)
    for n in range(len(cams)):
        expected = torch.nonzero(seen[n]).squeeze(1)
        got = mapping.erp_index[mapping.entries_of(n)]
        assert torch.equal(torch.sort(got).values, expected), f"camera {n}"
        sel = mapping.entries_of(n)
        torch.testing.assert_close(mapping.x[sel], x[n][got])
        torch.testing.assert_close(mapping.y[sel], y[n][got])
    assert bool((mapping.patch_index[1:] >= mapping.patch_index[:-1]).all())
    cols_of = [set((mapping.erp_index[mapping.entries_of(n)] % W).tolist()) for n in range(len(cams))]
    assert len(cols_of[3]) == W  # the pole camera sees every longitude
    assert {0, W - 1} <= cols_of[1] and W // 2 not in cols_of[1]  # the seam camera wraps


def test_twenty_patches_cost_about_two_erp_passes():
    H = 512
    cams = icosahedron_layout().cameras(256)
    mapping = patch_to_erp(cams, H)
    visited = sum(fp.size for fp in mapping.footprints)
    full = H * erp_width(H)
    assert visited < 4.0 * full, visited / full  # 20 full passes would be 20x
    assert len(mapping) < 3.0 * full


def test_patches_to_erp_fuses_with_weights():
    H = 64
    cams = _cameras(torch.float32, size=32, fov=80.0)
    mapping = patch_to_erp(cams, H)
    n = len(cams)
    const = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None].expand(n, 1, 32, 48)
    # Each patch holds its own index + 1; equal weights give the mean over the patches seen.
    erp, wsum = patches_to_erp(const.contiguous(), mapping)
    counts = mapping.counts()
    torch.testing.assert_close(wsum, counts.float())
    brute = torch.zeros(H * 2 * H).index_add_(0, mapping.erp_index, (mapping.patch_index + 1).float())
    expected = torch.where(counts > 0, brute.view(H, 2 * H) / counts.clamp_min(1), torch.nan)
    torch.testing.assert_close(erp[0], expected, equal_nan=True)
    # A weight of zero on every patch but one reproduces that patch alone.
    weights = (mapping.patch_index == 2).float()
    erp2, wsum2 = patches_to_erp(const.contiguous(), mapping, weights=weights)
    seen2 = wsum2 > 0
    torch.testing.assert_close(erp2[0][seen2], torch.full_like(erp2[0][seen2], 3.0))
    assert bool(erp2[0][~seen2].isnan().all())


def test_best_entry_picks_the_highest_score():
    H = 48
    cams = _cameras(torch.float32, size=24, fov=100.0)
    mapping = patch_to_erp(cams, H)
    scores = -mapping.centre_distance()
    best = mapping.best_entry(scores)
    counts = mapping.counts()
    assert bool(((best >= 0) == (counts > 0)).all())
    flat_best = best.flatten()
    for pixel in torch.nonzero(counts.flatten() > 1).squeeze(1)[:200]:
        entries = torch.nonzero(mapping.erp_index == pixel).squeeze(1)
        assert float(scores[flat_best[pixel]]) == float(scores[entries].max())
        assert int(mapping.erp_index[flat_best[pixel]]) == int(pixel)


def test_sample_checks_shapes():
    cams = _cameras(torch.float32, size=16)
    mapping = patch_to_erp(cams, 32)
    with pytest.raises(ValueError, match="patch maps"):
        mapping.sample(torch.zeros(len(cams), 1, 16, 16))
