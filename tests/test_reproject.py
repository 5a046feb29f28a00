"""Perspective -> ERP re-projection: exact footprints, sub-pixel round trips, fusion helpers."""

from __future__ import annotations

import pytest
import torch
from conftest import angle_between, erp_pixel_angle
from test_sampling import PITCH, ROLL, YAW

from spherical.camera import PatchCameras
from spherical.erp import erp_rays, erp_width
from spherical.layouts import icosahedron_layout
from spherical.reproject import _classify_tiles, patch_to_erp, patches_to_erp
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


def _brute_force(cams: PatchCameras, H: int):
    """Every ERP pixel projected into every camera: (N,H*W) x, y and the seen mask."""
    rays = erp_rays(H, dtype=cams.dtype).reshape(1, -1, 3).expand(len(cams), -1, -1)
    x, y, z = cams.project(rays)
    h, w = cams.height, cams.width
    return x, y, (z > 0) & (x >= 0.5) & (x <= w - 0.5) & (y >= 0.5) & (y <= h - 0.5)


def test_partial_tiles_and_inner_tiles_find_exactly_the_seen_pixels():
    """An ERP whose size is not a multiple of the tile (partial last tile row and column):
    inner tiles (taken whole) and border tiles (tested) together give exactly the brute-force
    set, and every entry lies inside the pixel-centre hull."""
    H, tile = 101, 4  # W = 202: 101 % 4 and 202 % 4 are both non-zero
    cams = _cameras(torch.float64, size=40, fov=85.0)
    h, w = cams.height, cams.width
    touched, inner = _classify_tiles(cams, H, tile)
    assert bool(inner.any(1).all()) and int(inner.sum()) > 0.5 * int(touched.sum())  # most tiles skip the test
    mapping = patch_to_erp(cams, H, tile=tile)
    assert sum(fp.size for fp in mapping.footprints) == int(touched.sum()) * tile**2
    x, y, seen = _brute_force(cams, H)
    for n in range(len(cams)):
        sel = mapping.entries_of(n)
        got = mapping.erp_index[sel].long()
        assert torch.equal(torch.sort(got).values, torch.nonzero(seen[n]).squeeze(1)), f"camera {n}"
        torch.testing.assert_close(mapping.x[sel], x[n][got])
        torch.testing.assert_close(mapping.y[sel], y[n][got])
    assert bool(((mapping.x >= 0.5) & (mapping.x <= w - 0.5) & (mapping.y >= 0.5) & (mapping.y <= h - 0.5)).all())


def test_patches_without_inner_tiles_or_without_any_pixel():
    """Narrow patches (no inner tile, or not a single ERP pixel centre in view) still match the
    brute force, and sampling and fusion handle their empty entry ranges."""
    H = 128
    cams = PatchCameras.from_ypr(
        [0.3, 40.0, -100.0], [0.3, 10.0, 0.0], fov_x_deg=[0.5, 4.0, 100.0], height=8, width=8, dtype=torch.float64
    )
    _, inner = _classify_tiles(cams, H, 16)
    assert not bool(inner[:2].any()) and bool(inner[2].any())
    mapping = patch_to_erp(cams, H)
    _, _, seen = _brute_force(cams, H)
    counts = [sl.stop - sl.start for sl in map(mapping.entries_of, range(3))]
    assert counts[0] == 0 and counts[1] > 0, counts
    for n in range(3):
        got = torch.sort(mapping.erp_index[mapping.entries_of(n)].long()).values
        assert torch.equal(got, torch.nonzero(seen[n]).squeeze(1)), f"camera {n}"
    values = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    assert mapping.sample_patch(values[0], 0).shape == (2, 0)
    assert mapping.sample(values).shape == (2, len(mapping))
    _, wsum = patches_to_erp(values, mapping)
    torch.testing.assert_close(wsum, mapping.counts().double())


def test_float32_correspondences_match_float64():
    """float32 finds the float64 entries, except pixels within a hair of the patch border, at
    coordinates within 1e-3 patch px."""
    H = 128
    cams64 = _cameras(torch.float64, size=48, fov=80.0)
    h, w = cams64.height, cams64.width
    m64, m32 = patch_to_erp(cams64, H), patch_to_erp(cams64.to(dtype=torch.float32), H)
    assert m32.x.dtype == torch.float32 and m32.erp_index.dtype == torch.int32
    x, y, _ = _brute_force(cams64, H)
    for n in range(len(cams64)):
        x32 = torch.full((H * 2 * H,), torch.nan, dtype=torch.float64)
        y32 = torch.full((H * 2 * H,), torch.nan, dtype=torch.float64)
        index32 = m32.erp_index[m32.entries_of(n)].long()
        x32[index32], y32[index32] = m32.x[m32.entries_of(n)].double(), m32.y[m32.entries_of(n)].double()
        index64 = m64.erp_index[m64.entries_of(n)].long()
        both = index64[~x32[index64].isnan()]
        assert float((x32[both] - x[n][both]).abs().max()) < 1e-3
        assert float((y32[both] - y[n][both]).abs().max()) < 1e-3
        differ = torch.tensor(sorted(set(index64.tolist()) ^ set(index32.tolist())), dtype=torch.long)
        if differ.numel():
            xd, yd = x[n][differ], y[n][differ]
            margin = torch.stack((xd - 0.5, (w - 0.5) - xd, yd - 0.5, (h - 0.5) - yd)).amin(0)
            assert float(margin.abs().max()) < 1e-3, f"camera {n}"


def test_sample_equals_one_grid_sample_per_patch_for_any_thread_count():
    H = 64
    cams = _cameras(torch.float32, size=24, fov=90.0)
    mapping = patch_to_erp(cams, H)
    g = torch.Generator().manual_seed(2)
    values = torch.rand(len(cams), 3, 24, 40, generator=g)
    labels = torch.randint(0, 150, (len(cams), 1, 24, 40), generator=g).to(torch.uint8)

    def reference(maps: torch.Tensor, mode: str) -> torch.Tensor:
        return torch.cat(
            [
                torch.nn.functional.grid_sample(
                    maps[n][None].float(), mapping.grid(n), mode=mode, padding_mode="border", align_corners=False
                )[0, :, 0]
                for n in range(len(cams))
            ],
            1,
        )  # (C,M)

    threads = torch.get_num_threads()
    try:
        for count in (1, 3):  # 3: entries split into unequal rows, the last one padded
            torch.set_num_threads(count)
            torch.testing.assert_close(mapping.sample(values), reference(values, "bilinear"), rtol=0, atol=1e-6)
            torch.testing.assert_close(
                mapping.sample_patch(values[4], 4), mapping.sample(values)[:, mapping.entries_of(4)]
            )
            nearest = mapping.sample(labels, mode="nearest")
            assert nearest.dtype == torch.uint8
            assert torch.equal(nearest, reference(labels, "nearest").round().to(torch.uint8))
    finally:
        torch.set_num_threads(threads)


def test_fused_reprojection_equals_sample_then_scatter():
    H = 64
    cams = _cameras(torch.float64, size=24, fov=90.0)
    mapping = patch_to_erp(cams, H)
    g = torch.Generator().manual_seed(4)
    values = torch.rand(len(cams), 2, 24, 40, generator=g, dtype=torch.float64)
    weights = torch.rand(len(mapping), generator=g, dtype=torch.float64)
    weights[mapping.entries_of(0)] = 0.0  # patch 0 contributes nothing
    erp, wsum = patches_to_erp(values, mapping, weights=weights)
    sums, wsum2 = mapping.scatter_sum(mapping.sample(values), weights)
    torch.testing.assert_close(wsum, wsum2)
    expected = torch.where(wsum2 > 0, sums / wsum2, torch.nan)
    torch.testing.assert_close(erp, expected, equal_nan=True)
    only_0 = (mapping.counts() == 1).flatten() & torch.zeros(H * 2 * H, dtype=torch.bool).index_fill_(
        0, mapping.erp_index[mapping.entries_of(0)].long(), True
    )
    assert int(only_0.sum()) > 0 and bool(erp.flatten(1)[:, only_0].isnan().all())
    # Summing per-patch scatters gives the same sums.
    per_patch = sum(
        mapping.scatter_sum(mapping.sample_patch(values[n], n), weights[mapping.entries_of(n)], mapping.entries_of(n))[
            0
        ]
        for n in range(len(cams))
    )
    torch.testing.assert_close(per_patch, sums)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    H = 64
    cams = _cameras(torch.float64, size=24, fov=90.0)  # float64: no border pixel flips between devices
    cpu = patch_to_erp(cams, H)
    gpu = patch_to_erp(cams.to("cuda"), H)
    assert gpu.erp_index.device.type == "cuda" and gpu.offsets == cpu.offsets
    assert torch.equal(gpu.erp_index.cpu(), cpu.erp_index)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=0, atol=1e-9)
    values = torch.rand(len(cams), 3, 24, 40)
    erp_cpu, w_cpu = patches_to_erp(values, cpu)
    erp_gpu, w_gpu = patches_to_erp(values.cuda(), gpu)
    torch.testing.assert_close(w_gpu.cpu(), w_cpu)
    torch.testing.assert_close(erp_gpu.cpu(), erp_cpu, rtol=0, atol=1e-4, equal_nan=True)
