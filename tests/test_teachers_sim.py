"""Simulated teachers: perfect by default, and each error knob does what it says, measurably."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import angle_between

from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, TeacherCameras, TeacherError
from pipeline.teachers.sim import SimTeacher, parse_sim_spec
from spherical.layouts import fibonacci_directions, icosahedron_layout
from synthetic.render import render_patches
from synthetic.scene import generate_scene

PANO = "rooms/room_00007"
SIZE = 48


def sim(task: str, spec: str = "sim") -> SimTeacher:
    return SimTeacher(task, parse_sim_spec(spec, task), spec)


@pytest.fixture(scope="module")
def cameras() -> TeacherCameras:
    return TeacherCameras.from_cameras(icosahedron_layout().cameras(SIZE), [PANO] * 20)


@pytest.fixture(scope="module")
def truth(cameras: TeacherCameras):
    return render_patches(generate_scene(7), cameras)


def images(cameras: TeacherCameras) -> torch.Tensor:
    return torch.zeros(len(cameras), 3, cameras.height, cameras.width)


def test_perfect_sim_is_ground_truth(cameras, truth) -> None:
    depth = sim("depth").predict(images(cameras), cameras)
    normals = sim("normals").predict(images(cameras), cameras)
    semantic = sim("semantic").predict(images(cameras), cameras)
    assert depth.dtype == normals.dtype == semantic.dtype == torch.float32
    assert torch.equal(depth, truth.zdepth)
    assert torch.equal(normals, truth.normals)
    assert semantic.shape == (20, 150, SIZE, SIZE)
    one_hot = F.one_hot(truth.semantic.long(), 150).permute(0, 3, 1, 2).float()  # (B,h,w,C) -> (B,C,h,w)
    assert torch.equal(semantic, one_hot)
    assert sim("depth").depth_kind == METRIC_ZDEPTH


def test_patches_of_several_panoramas_in_one_batch(cameras) -> None:
    mixed = TeacherCameras.from_cameras(cameras[:4], [PANO, "room_00002", PANO, "room_00002"])
    out = sim("depth").predict(images(mixed), mixed)
    alone = render_patches(generate_scene(2), mixed[[1, 3]]).zdepth
    assert torch.equal(out[[1, 3]], alone)
    assert torch.equal(out[[0, 2]], render_patches(generate_scene(7), mixed[[0, 2]]).zdepth)


def test_scale_error_is_a_zero_mean_field_within_bounds(cameras, truth) -> None:
    e = 0.2
    log_means, spans = [], []
    for pano in (PANO, "room_00011", "room_00012", "room_00013"):
        cams = TeacherCameras.from_cameras(cameras, [pano] * 20)
        gt = truth.zdepth if pano == PANO else render_patches(generate_scene(int(pano[-5:])), cams).zdepth
        ratio = sim("depth", f"sim:scale_error={e}").predict(images(cams), cams) / gt  # (B,h,w)
        per_patch = ratio.flatten(1)
        # One factor per patch, within [1/(1+e), 1+e].
        assert float((per_patch.std(1) / per_patch.mean(1)).max()) < 1e-5
        scale = per_patch.mean(1).double()
        assert float(scale.min()) >= 1 / (1 + e) - 1e-5
        assert float(scale.max()) <= 1 + e + 1e-5
        log_means.append(float(scale.log().mean()))
        spans.append(float(scale.log().abs().max()) / math.log1p(e))
    # The icosahedron's 20 directions integrate degree <= 2 harmonics exactly: log-mean 0.
    assert max(abs(m) for m in log_means) < 1e-5
    # The errors are real: some patch of each panorama is off by a good part of e.
    assert min(spans) > 0.3
    # Drawn per panorama: different rooms get different fields.
    assert len({round(m, 3) for m in spans}) > 1


def test_scale_field_is_smooth_over_directions() -> None:
    teacher = sim("depth", "sim:scale_error=0.2")
    dirs = fibonacci_directions(300)
    g = torch.tensor(teacher.scale_field(PANO).g(dirs))  # (300,)
    assert float(g.abs().max()) > 0.95  # normalised to max |g| = 1 (up to the sampling)
    axes = torch.tensor(dirs)
    angle = torch.acos((axes @ axes.T).clamp(-1, 1))  # (300,300)
    diff = (g[:, None] - g[None]).abs()
    # Bernstein: a degree-2 polynomial bounded by 1 on the sphere changes at most 2 per radian.
    assert bool((diff <= 2.0 * angle + 1e-9).all())
    near = (angle > 0) & (angle < math.radians(20))
    assert float(diff[near].mean()) < 0.4 * float(diff.mean())


def test_bias_scales_every_pixel(cameras, truth) -> None:
    out = sim("depth", "sim:bias=1.1").predict(images(cameras), cameras)
    assert torch.allclose(out / truth.zdepth, torch.full_like(out, 1.1), rtol=1e-6)


def test_relative_depth_is_affine_disparity_per_patch(cameras, truth) -> None:
    teacher = sim("depth", "sim:relative=1")
    assert teacher.depth_kind == RELATIVE_DISPARITY
    disp = teacher.predict(images(cameras), cameras).double()
    inverse = 1.0 / truth.zdepth.double()
    scales, shifts = [], []
    for i in range(len(cameras)):
        design = torch.stack((inverse[i].flatten(), torch.ones(SIZE * SIZE, dtype=torch.float64)), -1)  # (N,2)
        solution = torch.linalg.lstsq(design, disp[i].flatten()[:, None]).solution[:, 0]
        residual = design @ solution - disp[i].flatten()
        assert float(residual.abs().max() / disp[i].abs().max()) < 1e-5
        scales.append(float(solution[0]))
        shifts.append(float(solution[1]))
    assert all(0.5 - 1e-6 <= s <= 2.0 + 1e-6 for s in scales)
    assert all(t >= -1e-6 for t in shifts)
    # Random per patch, not one global affine map.
    assert max(scales) / min(scales) > 1.3
    assert max(shifts) - min(shifts) > 0.01


def test_noise_is_log_normal_with_the_configured_std(cameras, truth) -> None:
    out = sim("depth", "sim:noise=0.05").predict(images(cameras), cameras)
    log_ratio = (out.double() / truth.zdepth.double()).log()
    assert abs(float(log_ratio.std()) - 0.05) < 0.0025
    assert abs(float(log_ratio.mean())) < 0.002


def test_edge_blur_acts_only_near_object_boundaries(cameras, truth) -> None:
    radius = 3
    out = sim("depth", f"sim:edge_blur={radius}").predict(images(cameras), cameras)
    instance = truth.instance.float()[:, None]  # (B,1,h,w)
    k = 2 * radius + 1
    uniform = (F.max_pool2d(instance, k, 1, radius) == -F.max_pool2d(-instance, k, 1, radius))[:, 0]
    assert torch.equal(out[uniform], truth.zdepth[uniform])
    # Near depth discontinuities the depth changes, towards values between both sides.
    z = truth.zdepth[:, None]
    zmax = F.max_pool2d(z, k, 1, radius)[:, 0]
    zmin = -F.max_pool2d(-z, k, 1, radius)[:, 0]
    jump = (zmax / zmin > 1.3) & ~uniform
    changed = (out - truth.zdepth).abs() / truth.zdepth > 0.02
    assert float(changed[jump].float().mean()) > 0.2
    assert bool((out[jump] >= zmin[jump] * (1 - 1e-5)).all() and (out[jump] <= zmax[jump] * (1 + 1e-5)).all())


def test_normal_noise_per_pixel_has_the_configured_rms_angle(cameras, truth) -> None:
    out = sim("normals", "sim:normal_noise=5").predict(images(cameras), cameras)
    angles = torch.rad2deg(angle_between(out, truth.normals, dim=1))
    rms = float(angles.pow(2).mean().sqrt())
    assert abs(rms - 5.0) < 0.4
    assert torch.allclose(torch.linalg.vector_norm(out, dim=1), torch.ones(1), atol=1e-5)
    rays = cameras.camera_rays().permute(0, 3, 1, 2)  # (B,h,w,3) -> (B,3,h,w)
    assert bool(((out * rays).sum(1) < 0).all())


def test_normal_noise_per_region_is_one_tilt_per_object(cameras, truth) -> None:
    out = sim("normals", "sim:normal_noise=5,normal_noise_region=1").predict(images(cameras), cameras)
    angles = torch.rad2deg(angle_between(out, truth.normals, dim=1))
    walls = truth.instance < 6  # room surfaces: planes, so one tilt gives one normal
    for b in range(len(cameras)):
        for obj in truth.instance[b][walls[b]].unique():
            region = truth.instance[b] == obj
            if int(region.sum()) < 20:
                continue
            normals = out[b][:, region]  # (3,N)
            assert float((normals - normals.mean(1, keepdim=True)).abs().max()) < 1e-4
    assert 2.0 < float(angles[walls].pow(2).mean().sqrt()) < 9.0


def test_confusion_only_near_class_boundaries(cameras, truth) -> None:
    c, width = 0.3, 2
    probs = sim("semantic", f"sim:confusion={c},confusion_width={width}").predict(images(cameras), cameras)
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-6)
    labels = truth.semantic.long()
    own = probs.gather(1, labels[:, None])[:, 0]  # (B,h,w)
    ids = labels.float()[:, None]
    k = 2 * width + 1
    interior = (F.max_pool2d(ids, k, 1, width) == -F.max_pool2d(-ids, k, 1, width))[:, 0]
    assert torch.equal(own[interior], torch.ones_like(own[interior]))
    edge = torch.zeros_like(interior)
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
    assert int(edge.sum()) > 100
    assert torch.allclose(own[edge], torch.full_like(own[edge], 1 - c))
    # The share moved goes to one class present across the boundary.
    top2 = probs.permute(0, 2, 3, 1)[edge].topk(2, dim=-1).values  # (N,2)
    assert torch.allclose(top2[:, 1], torch.full_like(top2[:, 1], c))


def test_label_smoothing(cameras, truth) -> None:
    probs = sim("semantic", "sim:smoothing=0.1").predict(images(cameras), cameras)
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-5)
    assert torch.allclose(probs.min(), torch.tensor(0.1 / 150))
    assert torch.equal(probs.argmax(1), truth.semantic.long())
    assert torch.allclose(probs.max(1).values, torch.tensor(0.9 + 0.1 / 150))


def test_errors_are_deterministic_and_independent_of_batching(cameras) -> None:
    spec = "sim:scale_error=0.2,noise=0.05,relative=1,edge_blur=2"
    first = sim("depth", spec).predict(images(cameras), cameras)
    second = sim("depth", spec).predict(images(cameras), cameras)
    assert torch.equal(first, second)
    reordered = [7, 3, 12]
    again = sim("depth", spec).predict(images(cameras[reordered]), cameras[reordered])
    assert torch.equal(again, first[reordered])
    other_seed = sim("depth", spec + ",seed=1").predict(images(cameras), cameras)
    assert not torch.equal(other_seed, first)
    normals = sim("normals", "sim:normal_noise=3").predict(images(cameras[:2]), cameras[:2])
    assert torch.equal(normals, sim("normals", "sim:normal_noise=3").predict(images(cameras[:2]), cameras[:2]))


def test_spec_parsing() -> None:
    cfg = parse_sim_spec("sim:scale_error=0.2,relative=yes,noise=0.01,seed=3", "depth")
    assert (cfg.scale_error, cfg.relative, cfg.noise, cfg.seed) == (0.2, True, 0.01, 3)
    assert parse_sim_spec("sim", "semantic").confusion == 0.0
    assert parse_sim_spec("sim:confusion_width=4", "semantic").confusion_width == 4
    with pytest.raises(
        TeacherError, match="unknown key 'confusion' for the depth teacher; valid keys: seed, scale_error"
    ):
        parse_sim_spec("sim:confusion=0.1", "depth")
    with pytest.raises(TeacherError, match="not a valid int"):
        parse_sim_spec("sim:confusion_width=1.5", "semantic")
    with pytest.raises(TeacherError, match="not a valid bool"):
        parse_sim_spec("sim:relative=maybe", "depth")
    with pytest.raises(TeacherError, match="bias must be > 0"):
        parse_sim_spec("sim:bias=0", "depth")
    with pytest.raises(TeacherError, match="expected key=value"):
        parse_sim_spec("sim:noise", "depth")


def test_non_synthetic_panorama_is_refused(cameras) -> None:
    cams = TeacherCameras.from_cameras(cameras[:1], ["photos/living_room"])
    with pytest.raises(TeacherError, match="not a synthetic room"):
        sim("depth").predict(images(cams), cams)
