"""pyequilib behind our conventions agrees with our formulas (and where it cannot)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import angle_between, erp_pixel_angle

from spherical.camera import PatchCameras
from spherical.equilib_adapter import equilib_erp_to_patches, equilib_patches_to_erp
from spherical.erp import erp_rays, ray_to_lonlat
from spherical.sampling import erp_to_patches

# Compound yaw/pitch/roll, away from the seam and the poles.
CAMS = dict(yaw_deg=[30.0, -100.0, 60.0, 0.0], pitch_deg=[20.0, -35.0, 50.0, 0.0], roll_deg=[10.0, 0.0, -20.0, 0.0])


def test_equi2pers_adapter_matches_our_sampler():
    H = 256
    erp = erp_rays(H, dtype=torch.float64).permute(2, 0, 1).contiguous()  # (3,H,W)
    cams = PatchCameras.from_ypr(**CAMS, fov_x_deg=70.0, height=48, width=64, dtype=torch.float64)
    ours = erp_to_patches(erp[None], cams)[0]
    theirs = equilib_erp_to_patches(erp, cams)
    assert theirs.shape == ours.shape
    assert float((ours - theirs).abs().max()) < 1e-6
    # Both are the camera rays of the conventions.
    err = angle_between(theirs.permute(0, 2, 3, 1), cams.world_rays())
    assert float(err.max()) < 0.01 * erp_pixel_angle(H)


def test_equi2pers_does_not_interpolate_across_the_seam():
    """The reason we sample ourselves: pyequilib reflects at +-180 degrees."""
    H = 256
    x = erp_rays(H, dtype=torch.float64)[..., 0]  # a map with a steep gradient at the seam
    erp = torch.sin(8 * x)[None].contiguous()
    cams = PatchCameras.from_ypr([180.0], [0.0], fov_x_deg=60.0, height=64, width=64, dtype=torch.float64)
    expected = torch.sin(8 * cams.world_rays()[..., 0])[:, None]
    ours_err = (erp_to_patches(erp[None], cams)[0] - expected).abs().max()
    theirs_err = (equilib_erp_to_patches(erp, cams) - expected).abs().max()
    assert float(ours_err) < 2e-3
    assert float(theirs_err) > 10 * float(ours_err)


def test_pers2equi_adapter_places_patches_to_half_a_pixel():
    H = 256
    W = 2 * H
    cams = PatchCameras.from_ypr(**CAMS, fov_x_deg=70.0, height=64, width=64, dtype=torch.float64)
    patches = cams.world_rays().permute(0, 3, 1, 2).contiguous()  # each pixel holds its own ray
    erps = equilib_patches_to_erp(patches, cams, H)  # (N,3,H,W)
    truth = erp_rays(H, dtype=torch.float64)
    for n in range(len(cams)):
        seen = erps[n].abs().sum(0) > 0
        assert int(seen.sum()) > 5000
        lon_v, lat_v = ray_to_lonlat(erps[n].permute(1, 2, 0)[seen])
        lon_t, lat_t = ray_to_lonlat(truth[seen])
        dlon = torch.remainder(lon_v - lon_t + math.pi, 2 * math.pi) - math.pi
        # Longitude (and the rotation) are corrected; pyequilib's ERP grid keeps its
        # latitude half a pixel up, which no rotation can undo.
        assert abs(float((dlon * W / (2 * math.pi)).median())) < 0.05
        assert float(((lat_v - lat_t) * H / math.pi).median()) == pytest.approx(0.5, abs=0.05)
