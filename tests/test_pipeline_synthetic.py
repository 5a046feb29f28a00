"""The label pipeline end to end on synthetic rooms, against the renderer's ground truth.

Runs `run_labels` in process (no Ray: the Ray path is tested in test_pipeline_ray.py) into a
real Zarr store on disk, then compares the store with `render_erp` at the label resolution,
whose pixel centres are exactly the labels' rays.
"""

from __future__ import annotations

import math
from dataclasses import replace

import faulty_teachers
import numpy as np
import pytest
import torch

from pipeline.config import LabelConfig, RunOptions
from pipeline.fusion import FusionConfig
from pipeline.run import run_labels
from spherical.camera import PatchCameras
from spherical.layouts import layout_coverage
from storage.labelstore import LabelStore
from synthetic.dataset import pano_name, write_dataset
from synthetic.render import render_erp, render_patches
from synthetic.scene import generate_scene

SEEDS = [4, 9]
LABEL_HEIGHT = 128
CONFIG = LabelConfig(
    depth_teacher="sim", semantic_teacher="sim", normal_teacher="sim", patch_size=128, erp_height=LABEL_HEIGHT
)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """Two synthetic panoramas at 512x256 (twice the label resolution), with ground truth."""
    root = tmp_path_factory.mktemp("rooms")
    write_dataset(root, SEEDS, height=256)
    truth = {pano_name(s): render_erp(generate_scene(s), LABEL_HEIGHT, dtype=torch.float64) for s in SEEDS}
    return root / "images", truth


def label(data, out, config: LabelConfig) -> LabelStore:
    summary = run_labels(str(data), str(out), config, RunOptions(in_process=True, overwrite=True))
    assert summary.exit_code == 0 and summary.ok == len(SEEDS), summary.failed
    return LabelStore.open(str(out))


def depth_absrel(store: LabelStore, truth: dict, relative: bool = False) -> dict[str, float]:
    """Mean |d - d*| / d* per panorama over labelled pixels; relative stores get one global
    affine fit of their inverse range to the true inverse range first."""
    out = {}
    for row in store.rows():
        depth = store.read(row["index"], ["depth"])["depth"].astype(np.float64)
        gt = truth[row["pano_id"]].range.numpy()
        valid = np.isfinite(depth)
        assert valid.mean() == 1.0
        if relative:
            A = np.stack((depth[valid], np.ones(valid.sum())), 1)
            coef, *_ = np.linalg.lstsq(A, 1.0 / gt[valid], rcond=None)
            depth = 1.0 / (depth * coef[0] + coef[1])
        out[row["pano_id"]] = float(np.mean(np.abs(depth[valid] - gt[valid]) / gt[valid]))
    return out


def test_perfect_teachers_reproduce_the_ground_truth(rooms, tmp_path):
    data, truth = rooms
    store = label(data, tmp_path / "store", CONFIG)
    assert store.spec.depth_kind == "metric_range"
    for row in store.rows():
        assert row["status"] == "ok"
        gt = truth[row["pano_id"]]
        labels = store.read(row["index"])
        for task in ("depth", "semantic", "normals"):
            assert row[f"{task}_coverage"] == 1.0 and row[f"{task}_coverage_polar"] == 1.0
        depth = labels["depth"].astype(np.float64)
        absrel = np.abs(depth - gt.range.numpy()) / gt.range.numpy()
        assert absrel.mean() <= 0.005, absrel.mean()
        normals = labels["normals"].astype(np.float64)
        cos = np.clip((normals * gt.normals.numpy()).sum(0) / np.linalg.norm(normals, axis=0), -1, 1)
        assert np.degrees(np.arccos(cos)).mean() <= 1.0
        agree = labels["semantic"] == gt.semantic.numpy()
        assert agree.mean() >= 0.995, agree.mean()
        # The stored RGB is the panorama at label resolution.
        assert labels["rgb"].shape == (3, LABEL_HEIGHT, 2 * LABEL_HEIGHT) and labels["rgb"].dtype == np.uint8
        assert np.abs(labels["rgb"] / 255.0 - gt.rgb.numpy()).mean() < 0.05
        # Perfect teachers agree with each other: confidence is high everywhere labelled.
        for task in ("depth", "normals", "semantic"):
            conf = labels[f"{task}_confidence"].astype(np.float32)
            assert conf.min() >= 0.0 and conf.max() <= 1.0
            assert row[f"{task}_confidence_mean"] > 0.9


def test_metric_scale_errors_are_aligned_away(rooms, tmp_path):
    """Per-patch scale errors of +-20%: aligned, the fused depth is within 2%; without the
    alignment it is not."""
    data, truth = rooms
    noisy = replace(CONFIG, depth_teacher="sim:scale_error=0.2", semantic_teacher="none", normal_teacher="none")
    aligned = label(data, tmp_path / "aligned", noisy)
    errors = depth_absrel(aligned, truth)
    assert max(errors.values()) <= 0.02, errors
    rows = aligned.rows()
    for row in rows:
        scales = np.array(row["depth_scales"])
        assert np.exp(np.log(scales).mean()) == pytest.approx(1.0, abs=1e-6)  # geometric mean fixed at 1
        assert scales.max() / scales.min() > 1.2  # the teacher's errors were real and were undone
        assert row["depth_align_residual"] < 0.2 * row["depth_align_residual_before"]
    unaligned_config = replace(noisy, fusion=replace(FusionConfig(), align_metric_depth=False))
    unaligned = depth_absrel(label(data, tmp_path / "unaligned", unaligned_config), truth)
    assert min(unaligned.values()) > 2.0 * max(errors.values()), (unaligned, errors)


def test_relative_disparity_is_aligned_jointly(rooms, tmp_path):
    """Random affine disparity per patch: after one global affine fit, within 2% of the truth.
    (Written through an fsspec URL, as a store on object storage would be.)"""
    data, truth = rooms
    config = replace(CONFIG, depth_teacher="sim:relative=1", semantic_teacher="none", normal_teacher="none")
    store = label(data, f"file://{tmp_path / 'relative'}", config)
    assert (tmp_path / "relative" / "manifest.parquet").is_file()
    assert store.spec.depth_kind == "relative_disparity"
    assert store.group.attrs["depth_kind"] == "relative_disparity"
    errors = depth_absrel(store, truth, relative=True)
    assert max(errors.values()) <= 0.02, errors


def test_worse_teachers_give_lower_confidence(rooms, tmp_path):
    """Noisy teachers disagree in the overlaps, and the confidences and figures say so."""
    data, _ = rooms
    clean = label(data, tmp_path / "clean", CONFIG).rows()
    noisy_config = replace(
        CONFIG,
        depth_teacher="sim:noise=0.05",
        normal_teacher="sim:normal_noise=10",
        semantic_teacher="sim:confusion=0.45,confusion_width=4",
    )
    noisy = label(data, tmp_path / "noisy", noisy_config).rows()
    for a, b in zip(clean, noisy, strict=True):
        assert b["depth_disagreement"] > 5 * a["depth_disagreement"]
        assert b["normals_disagreement_deg"] > 3 * a["normals_disagreement_deg"]
        for task in ("depth", "normals", "semantic"):
            assert b[f"{task}_confidence_mean"] < a[f"{task}_confidence_mean"] - 0.02, task


@pytest.mark.parametrize("depth_teacher", ["sim:scale_error=0.2", "sim:relative=1"])
def test_geometric_normals_follow_the_depth(rooms, tmp_path, depth_teacher):
    """Normals from the depth teacher's patches, metric or relative (then after alignment)."""
    data, truth = rooms
    config = replace(CONFIG, depth_teacher=depth_teacher, semantic_teacher="none", normal_teacher="geometric")
    store = label(data, tmp_path / "geometric", config)
    for row in store.rows():
        normals = store.read(row["index"], ["normals"])["normals"].astype(np.float64)
        gt = truth[row["pano_id"]].normals.numpy()
        valid = np.isfinite(normals).all(0)
        assert valid.mean() > 0.97
        cos = (normals[:, valid] * gt[:, valid]).sum(0) / np.linalg.norm(normals[:, valid], axis=0)
        assert np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))) < 1.0


def test_keep_patches_stores_raw_teacher_outputs(rooms, tmp_path):
    data, _ = rooms
    config = replace(CONFIG, keep_patches=True, depth_teacher="sim:scale_error=0.2")
    store = label(data, tmp_path / "patches", config)
    P = store.spec.num_patches
    s = config.patch_size
    arrays = store.read(0)
    assert arrays["patches/rgb"].shape == (P, 3, s, s)
    assert arrays["patches/depth"].shape == (P, s, s) and np.isfinite(arrays["patches/depth"]).all()
    rotation = arrays["patches/rotation"].astype(np.float64)
    np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (P, 3, 3)), atol=1e-5)
    # Raw outputs keep the teacher's per-patch errors: their scale differs from the fused labels'.
    cameras = PatchCameras(torch.from_numpy(rotation), torch.from_numpy(arrays["patches/fov_x_deg"]).double(), s, s)
    gt = render_patches(generate_scene(SEEDS[0]), cameras)
    ratio = np.nanmedian(arrays["patches/depth"] / gt.zdepth.numpy(), axis=(1, 2))
    assert ratio.max() / ratio.min() > 1.2
    assert (arrays["patches/semantic"] == gt.semantic.numpy()).mean() > 0.99
    n = arrays["patches/normals"].astype(np.float64)
    assert (n * gt.normals.numpy()).sum(1).mean() > 0.99


def test_default_layout_covers_every_label_pixel():
    cov = layout_coverage(CONFIG.patch_layout(), CONFIG.patch_size, LABEL_HEIGHT)
    assert cov.covered == 1.0 and cov.min_count >= 2
    assert math.isclose(cov.overlap_area, 1.0)


def test_nonfinite_teacher_outputs_are_masked_and_counted(rooms, tmp_path):
    data, truth = rooms
    config = replace(
        CONFIG, depth_teacher="py:faulty_teachers:holey_depth", semantic_teacher="none", normal_teacher="none"
    )
    store = label(data, tmp_path / "holes", config)
    patches = store.spec.num_patches
    for row in store.rows():
        assert row["depth_nonfinite"] == 2 * faulty_teachers.HOLE**2 * patches
        assert row["depth_coverage"] == 1.0  # the corners are seen by other patches
    assert max(depth_absrel(store, truth).values()) <= 0.005


def test_a_teacher_bug_fails_panoramas_with_its_reason(rooms, tmp_path):
    data, _ = rooms
    config = replace(CONFIG, semantic_teacher="py:faulty_teachers:wrong_shape_semantic")
    summary = run_labels(str(data), str(tmp_path / "bug"), config, RunOptions(in_process=True))
    assert summary.exit_code == 3 and summary.ok == 0
    for _, error in summary.failed:
        expected = "semantic teacher returned shape (8, 128, 128), expected (8, 150, h, w) with h = w"
        assert error == f"TeacherError: {expected}"
