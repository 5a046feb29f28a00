"""Training augmentations (trainer.augment) on a synthetic room with exact range, normals and classes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import angle_between

from spherical.depth import normals_from_erp_range
from spherical.erp import erp_rays
from spherical.rotation import pitch_matrix
from synthetic.render import render_erp, render_rays
from synthetic.scene import generate_scene
from trainer.augment import (
    MAP_KEYS,
    AugmentConfig,
    augment,
    jitter_colors,
    mirror_item,
    rotate_item,
    yaw_item,
)

H = 64
OFF = AugmentConfig(yaw=False, mirror=False, color_jitter=False, pitch_roll_deg=0.0)
CONFIGS = {
    "none": OFF,
    "yaw": dataclasses.replace(OFF, yaw=True),
    "mirror": dataclasses.replace(OFF, mirror=True, mirror_probability=1.0),
    "pitch_roll": dataclasses.replace(OFF, pitch_roll_deg=10.0),
    "all": AugmentConfig(pitch_roll_deg=10.0, mirror_probability=1.0),
}


def _item(seed: int = 0) -> dict:
    """A dataset item of a synthetic room: exact labels, random confidences, two unlabelled blocks."""
    render = render_erp(generate_scene(seed), H)
    g = torch.Generator().manual_seed(seed)
    shape = (H, 2 * H)
    depth_mask = torch.ones(shape, dtype=torch.bool)
    depth_mask[20:30, 40:60] = False  # a hole in the depth label (e.g. a window the teacher missed)
    semantic_mask = torch.ones(shape, dtype=torch.bool)
    semantic_mask[:, 100:110] = False
    normals_mask = depth_mask.clone()
    item = {
        "rgb": render.rgb,
        "depth": torch.where(depth_mask, render.range, 0.0),
        "depth_mask": depth_mask,
        "depth_confidence": torch.where(depth_mask, 0.5 + 0.5 * torch.rand(shape, generator=g), 0.0),
        "semantic": torch.where(semantic_mask, render.semantic.long(), 255),
        "semantic_mask": semantic_mask,
        "semantic_confidence": torch.where(semantic_mask, torch.rand(shape, generator=g), 0.0),
        "normals": torch.where(normals_mask, render.normals, 0.0),
        "normals_mask": normals_mask,
        "normals_confidence": torch.where(normals_mask, torch.rand(shape, generator=g), 0.0),
        "depth_metric": torch.tensor(True),
        "index": 7,
        "store": "memory://store",
        "pano_id": f"room_{seed:05d}",
        "readable": True,
    }
    return item


def _near_label_edges(item: dict) -> torch.Tensor:
    """(H,W) bool: within one pixel of a depth jump (> 5%), a normal change (> 5 deg), a class change or a hole."""
    depth = torch.where(item["depth_mask"], item["depth"], torch.nan).log()
    normals, classes = item["normals"], item["semantic"]
    edge = ~item["depth_mask"] | ~item["normals_mask"]
    for dim in (-1, -2):
        jump = (depth - torch.roll(depth, -1, dim)).abs() > 0.05
        jump |= (normals * torch.roll(normals, -1, dim)).sum(0) < math.cos(math.radians(5))
        jump |= classes != torch.roll(classes, -1, dim)
        if dim == -2:
            jump[-1] = False  # rows do not wrap
        edge |= jump | torch.roll(jump, 1, dim)
    wrapped = edge.float()[None, None]
    wrapped = torch.cat((wrapped[..., -1:], wrapped, wrapped[..., :1]), -1)  # (1,1,H,W+2), longitude wraps
    return F.max_pool2d(wrapped, 3, 1, padding=(1, 0))[0, 0] > 0


def _normals_disagreement_deg(item: dict) -> tuple[float, float]:
    """Mean angle (deg) between the item's normals and the normals of its depth, away from edges; share kept."""
    from_depth = normals_from_erp_range(torch.where(item["depth_mask"], item["depth"], torch.nan)[None])[0]
    angle = torch.rad2deg(angle_between(from_depth, item["normals"], dim=0))  # (H,W)
    keep = torch.isfinite(angle) & item["normals_mask"] & ~_near_label_edges(item)
    return float(angle[keep].mean()), float(keep.double().mean())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_normals_of_the_augmented_depth_agree_with_the_augmented_normals(name):
    for seed in (0, 1):
        item = _item(seed)
        out = augment(item, CONFIGS[name], torch.Generator().manual_seed(seed))
        mean_deg, kept = _normals_disagreement_deg(out)
        assert kept > 0.4  # most of the room is measured
        # Exact for the whole-pixel moves; bilinear range interpolation costs ~0.3 deg on pitch/roll.
        assert mean_deg < (1.0 if "pitch_roll" in name or name == "all" else 0.01), (name, seed, mean_deg)


def test_the_normals_check_sees_a_missing_or_wrong_rotation():
    """The check above has power: maps rolled without turning the normals, or turned the wrong way, fail it."""
    item = _item(0)
    k = H // 4  # a quarter turn
    unturned = {**yaw_item(item, k), "normals": torch.roll(item["normals"], k, dims=-1)}
    # Floors and ceilings (vertical normals) agree whatever the yaw: the walls carry the error.
    assert _normals_disagreement_deg(unturned)[0] > 5.0
    wrong_way = {**yaw_item(item, k), "normals": yaw_item(item, -k)["normals"].roll(2 * k, dims=-1)}
    assert _normals_disagreement_deg(wrong_way)[0] > 10.0
    unmirrored = {**mirror_item(item), "normals": torch.flip(item["normals"], dims=(-1,))}
    assert _normals_disagreement_deg(unmirrored)[0] > 10.0
    turned = rotate_item(item, math.radians(10), 0.0)
    pitch = pitch_matrix(torch.tensor(math.radians(10)))
    moved_only = torch.einsum("ji,jhw->ihw", pitch, turned["normals"])  # (3,H,W): R^T undoes the turn
    assert _normals_disagreement_deg({**turned, "normals": moved_only})[0] > 5.0


def test_pitch_roll_matches_a_render_from_the_turned_camera():
    """rotate_item's maps are what the camera turned by R = R_pitch R_roll sees: range along the
    same rays, normals R n, classes of the surface hit."""
    scene = generate_scene(2)
    render = render_erp(scene, H)
    shape = (H, 2 * H)
    ones = torch.ones(shape, dtype=torch.bool)
    item = {
        "rgb": render.rgb,
        "depth": render.range,
        "depth_mask": ones,
        "depth_confidence": torch.ones(shape),
        "semantic": render.semantic.long(),
        "semantic_mask": ones,
        "semantic_confidence": torch.ones(shape),
        "normals": render.normals,
        "normals_mask": ones,
        "normals_confidence": torch.ones(shape),
    }
    pitch, roll = math.radians(8.0), math.radians(-6.0)
    out = rotate_item(item, pitch, roll)
    rotation = torch.tensor(
        [[1.0, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]]
    )
    rotation = rotation @ torch.tensor(
        [[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1.0]]
    )  # docs/conventions.md's R_pitch R_roll, written out
    truth = render_rays(scene, erp_rays(H) @ rotation)  # the input's ray R^T d for every output ray d
    keep = ~_near_label_edges(out)
    relative = (out["depth"] / truth.range - 1).abs()
    assert float(relative[keep].max()) < 0.01
    true_normals = torch.einsum("ij,hwj->ihw", rotation, truth.normals)  # (3,H,W): R n
    assert float(torch.rad2deg(angle_between(out["normals"], true_normals, dim=0))[keep].mean()) < 0.2
    assert float((out["semantic"] == truth.semantic.long()).double().mean()) > 0.97


def test_roll_by_the_full_width_and_yaw_there_and_back_are_the_identity():
    item = _item(1)
    W = 2 * H
    for out in (yaw_item(item, W), yaw_item(yaw_item(item, 37), -37), yaw_item(yaw_item(item, -5), 5)):
        for key in MAP_KEYS:
            if key == "normals":  # rotated by 2 pi, or by alpha then -alpha, in float32
                torch.testing.assert_close(out[key], item[key], atol=1e-6, rtol=0)
            else:
                assert torch.equal(out[key], item[key]), key
    moved = yaw_item(item, 37)
    assert not torch.equal(moved["depth"], item["depth"])
    assert torch.equal(moved["semantic"], torch.roll(item["semantic"], 37, dims=-1))


def test_mirror_twice_is_the_identity_and_mirror_maps_column_u_to_w_minus_1_minus_u():
    item = _item(0)
    twice = mirror_item(mirror_item(item))
    for key in MAP_KEYS:
        assert torch.equal(twice[key], item[key]), key
    once = mirror_item(item)
    W = 2 * H
    assert torch.equal(once["depth"][:, 0], item["depth"][:, W - 1])
    assert torch.equal(once["normals"][0, :, 3], -item["normals"][0, :, W - 4])
    assert torch.equal(once["normals"][1:, :, 3], item["normals"][1:, :, W - 4])


@pytest.mark.parametrize("name", ["yaw", "mirror", "all"])
def test_classes_are_moved_never_mixed_and_masks_move_with_their_maps(name):
    item = _item(3)
    for seed in range(3):
        out = augment(item, CONFIGS[name], torch.Generator().manual_seed(seed))
        if name == "all":  # resampled: every output class exists in the input
            assert set(out["semantic"].unique().tolist()) <= set(item["semantic"].unique().tolist())
        else:  # whole-pixel moves: the multiset of class ids is unchanged
            assert torch.equal(out["semantic"].flatten().sort().values, item["semantic"].flatten().sort().values)
            assert int(out["depth_mask"].sum()) == int(item["depth_mask"].sum())
        # The unlabelled pixels of every map are exactly where its mask is False.
        assert torch.equal(out["semantic"] == 255, ~out["semantic_mask"])
        assert torch.equal(out["depth"] > 0, out["depth_mask"])
        assert torch.equal(out["normals"].abs().sum(0) > 0, out["normals_mask"])
        for task in ("depth", "semantic", "normals"):
            assert bool((out[f"{task}_confidence"][~out[f"{task}_mask"]] == 0).all())
        # No unlabelled zero leaks into a labelled depth or normal (masked interpolation).
        assert float(out["depth"][out["depth_mask"]].min()) >= float(item["depth"][item["depth_mask"]].min()) - 1e-5
        lengths = torch.linalg.vector_norm(out["normals"], dim=0)[out["normals_mask"]]
        torch.testing.assert_close(lengths, torch.ones_like(lengths), atol=1e-5, rtol=0)


def test_nan_under_false_masks_stays_out_of_labelled_pixels():
    item = _item(1)
    item["depth"] = torch.where(item["depth_mask"], item["depth"], torch.nan)
    item["normals"] = torch.where(item["normals_mask"], item["normals"], torch.nan)
    out = rotate_item(item, math.radians(7), math.radians(-4))
    assert bool(torch.isfinite(out["depth"][out["depth_mask"]]).all())
    assert bool(torch.isfinite(out["normals"][:, out["normals_mask"]]).all())
    assert bool(torch.isfinite(out["rgb"]).all())


def test_colour_jitter_changes_rgb_only():
    item = _item(2)
    config = dataclasses.replace(OFF, color_jitter=True, brightness=0.4, contrast=0.4, saturation=0.4)
    out = augment(item, config, torch.Generator().manual_seed(5))
    assert not torch.equal(out["rgb"], item["rgb"])
    assert float(out["rgb"].min()) >= 0.0 and float(out["rgb"].max()) <= 1.0
    for key in item:
        if key != "rgb":
            assert out[key] is item[key], key  # label maps and bookkeeping untouched, not even copied


def test_jitter_factors():
    rgb = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(jitter_colors(rgb, 1.5, 1.0, 1.0), (rgb * 1.5).clamp(0, 1))
    grey = jitter_colors(rgb, 1.0, 1.0, 0.0)  # saturation 0: every channel is the luma
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    torch.testing.assert_close(grey, luma.expand(3, -1, -1))
    flat = jitter_colors(rgb, 1.0, 0.0, 1.0)  # contrast 0: the mean grey level everywhere
    torch.testing.assert_close(flat, torch.full_like(rgb, float(luma.mean())))
    torch.testing.assert_close(jitter_colors(rgb, 1.0, 1.0, 1.0), rgb, atol=1e-6, rtol=0)


def test_randomness_comes_from_the_generator_only():
    item = _item(0)
    config = CONFIGS["all"]
    first = augment(item, config, torch.Generator().manual_seed(11))
    again = augment(item, config, torch.Generator().manual_seed(11))
    other = augment(item, config, torch.Generator().manual_seed(12))
    for key in MAP_KEYS:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["depth"], other["depth"])
    # The input item is not modified.
    assert torch.equal(item["depth"], _item(0)["depth"])
    # Every call draws the same numbers whatever is on: the yaw of a run without mirror is the
    # yaw of a run with it.
    yaw_only = augment(item, CONFIGS["yaw"], torch.Generator().manual_seed(11))
    yaw_and_jitter = augment(
        item, dataclasses.replace(CONFIGS["yaw"], color_jitter=True), torch.Generator().manual_seed(11)
    )
    assert torch.equal(yaw_only["depth"], yaw_and_jitter["depth"])


def test_bad_config_and_item_are_refused():
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=1.5)
    with pytest.raises(ValueError, match="pitch_roll_deg"):
        AugmentConfig(pitch_roll_deg=-1.0)
    with pytest.raises(ValueError, match="W = 2H"):
        augment({"rgb": torch.zeros(3, 4, 4)}, AugmentConfig(), torch.Generator())
