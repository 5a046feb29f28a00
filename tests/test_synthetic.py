"""The synthetic world: deterministic rooms, exact renders, ERP and perspective agree."""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import angle_between

from spherical.ade20k import ADE20K_CLASSES, ADE20K_ID
from spherical.depth import camera_to_world_normals
from spherical.erp import erp_rays
from spherical.layouts import icosahedron_layout
from spherical.reproject import patch_to_erp
from synthetic.render import render_erp, render_patches
from synthetic.scene import Scene, SceneConfig, generate_scene


def test_scenes_are_deterministic_and_serialisable():
    a, b, c = generate_scene(11), generate_scene(11), generate_scene(12)
    assert a == b and a != c
    assert Scene.from_json(a.to_json()) == a
    ra, rb = render_erp(a, 64), render_erp(b, 64)
    assert torch.equal(ra.rgb, rb.rgb) and torch.equal(ra.range, rb.range)


def test_rooms_respect_the_configured_ranges():
    cfg = SceneConfig()
    kinds = set()
    for seed in range(40):
        s = generate_scene(seed)
        r = s.room
        for side in (r.x_max - r.x_min, r.z_max - r.z_min):
            assert cfg.floor_size[0] <= side <= cfg.floor_size[1]
        assert cfg.room_height[0] <= r.height <= cfg.room_height[1]
        assert cfg.camera_height[0] <= s.camera_height <= cfg.camera_height[1]
        assert r.x_min <= -cfg.wall_margin and r.x_max >= cfg.wall_margin
        kinds |= {b.kind for b in s.boxes} | {c.kind for c in s.cylinders}
        for box in s.boxes:  # furniture parts stay between floor and ceiling, inside the walls
            assert r.y_ceiling < box.center[1] - box.half_size[1]
            assert box.center[1] + box.half_size[1] <= r.y_floor + 1e-9
            c, s_ = abs(math.cos(box.yaw)), abs(math.sin(box.yaw))
            ext_x = c * box.half_size[0] + s_ * box.half_size[2]
            ext_z = s_ * box.half_size[0] + c * box.half_size[2]
            assert r.x_min - 1e-9 <= box.center[0] - ext_x and box.center[0] + ext_x <= r.x_max + 1e-9
            assert r.z_min - 1e-9 <= box.center[2] - ext_z and box.center[2] + ext_z <= r.z_max + 1e-9
        # Pieces stand on the floor: the lowest part of every scene touches it.
        assert max(b.center[1] + b.half_size[1] for b in s.boxes) == pytest.approx(r.y_floor)
        assert {p.kind for p in s.panels} >= {"door", "windowpane"}
        assert s.class_ids() <= set(range(len(ADE20K_CLASSES)))
    assert len(kinds) >= 8  # boxes and cylinders of many kinds


def test_erp_render_is_geometrically_exact():
    scene = generate_scene(3)
    H = 128
    r = render_erp(scene, H, dtype=torch.float64)
    rays = erp_rays(H, dtype=torch.float64).permute(2, 0, 1)  # (3,H,W)
    points = r.range * rays
    floor = r.semantic == ADE20K_ID["floor"]
    ceiling = r.semantic == ADE20K_ID["ceiling"]
    assert floor[-1].all() and ceiling[0].all()  # nadir and zenith
    # Floor points lie on the plane y = camera height, with normal (0, -1, 0).
    torch.testing.assert_close(points[1][floor], torch.full_like(points[1][floor], scene.camera_height))
    assert float(angle_between(r.normals[:, floor].T, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)).max()) < 1e-9
    assert (
        float(angle_between(r.normals[:, ceiling].T, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)).max()) < 1e-9
    )
    # Every normal is unit and faces the camera; every pixel has a hit and a class.
    torch.testing.assert_close(torch.linalg.vector_norm(r.normals, dim=0), torch.ones(H, 2 * H, dtype=torch.float64))
    assert bool(((r.normals * rays).sum(0) < 0).all())
    assert bool(torch.isfinite(r.range).all()) and float(r.range.min()) > 0.3
    assert set(r.semantic.unique().tolist()) <= scene.class_ids()
    assert float(r.rgb.min()) >= 0.0 and float(r.rgb.max()) <= 1.0
    # Surfaces are textured and shaded, not flat colours.
    assert float(r.rgb[:, floor].std(dim=1).min()) > 0.02


def test_erp_render_is_fast():
    scene = generate_scene(5)
    render_erp(scene, 64)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        render_erp(scene, 512)  # 1024 x 512
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1.0, times


def test_patch_render_is_consistent_with_its_cameras():
    scene = generate_scene(8)
    cams = icosahedron_layout().cameras(32, dtype=torch.float64)
    p = render_patches(scene, cams)
    assert p.rgb.shape == (20, 3, 32, 32) and p.normals.shape == (20, 3, 32, 32)
    torch.testing.assert_close(p.zdepth * cams.ray_norms(), p.range)
    # Camera-frame normals face the camera: n . c < 0 for the pixel's camera ray.
    facing = (p.normals * cams.camera_rays().permute(0, 3, 1, 2)).sum(1)
    assert bool((facing < 0).all())


def _edges(instance: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """(H,W) pixels next to an object boundary or a crease (normal change > 0.5 degrees),
    3x3 neighbourhood, wrapping in longitude."""
    inst = instance[None, None].double()
    pad = torch.cat((inst[..., -1:], inst, inst[..., :1]), -1)
    hi = F.max_pool2d(pad, 3, 1, padding=(1, 0))
    lo = -F.max_pool2d(-pad, 3, 1, padding=(1, 0))
    edge = (hi != lo)[0, 0]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = torch.roll(normals, (dy, dx), (1, 2))
            edge |= (shifted * normals).sum(0) < math.cos(math.radians(0.5))
    return edge


@pytest.mark.parametrize("seed", [0, 7])
def test_perspective_render_reprojected_matches_erp_render(seed):
    """Render 20 patches and the panorama of one room; re-project the patches to ERP."""
    scene = generate_scene(seed)
    H = 256
    erp = render_erp(scene, H)
    cams = icosahedron_layout().cameras(256)
    patches = render_patches(scene, cams)
    mapping = patch_to_erp(cams, H)
    idx = mapping.erp_index

    edges = _edges(erp.instance, erp.normals).flatten()[idx]
    assert float(edges.double().mean()) < 0.12

    range_back = mapping.sample(patches.range[:, None])[0]
    truth = erp.range.flatten()[idx]
    rel = ((range_back - truth).abs() / truth)[~edges]
    assert float(rel.max()) < 0.005  # 0.5 %

    world = camera_to_world_normals(patches.normals, cams.rotation)
    normals_back = mapping.sample(world)  # (3,M)
    err_deg = torch.rad2deg(angle_between(normals_back, erp.normals.flatten(1)[:, idx], dim=0))
    assert float(err_deg[~edges].max()) < 1.0

    ids = mapping.sample(patches.semantic[:, None], mode="nearest")[0]
    best = mapping.best_entry(-mapping.centre_distance()).flatten()  # per ERP pixel
    covered = best >= 0
    assert bool(covered.all())
    agree = ids[best[covered]] == erp.semantic.flatten()[covered]
    assert float(agree.double().mean()) >= 0.99
