"""The label pipeline on the real Replica panoramas, through a `py:` plugin teacher.

The plugin (tests/replica_teacher.py) samples Replica's own range, normals and segments into
each patch, so the pipeline's output must give Replica back: this checks the geometry and
the fusion on real scenes (clutter, thin objects, holes in the depth) rather than boxes.

Labels are made at H = 256 from 1024-row ground truth. A label pixel's centre is the corner
shared by the central 2x2 pixels of its 4x4 block, so the reference value of a smooth map is
the mean of those four (what bilinear interpolation gives there).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import replica_teacher
import torch.nn.functional as F

from pipeline.config import LabelConfig, RunOptions
from pipeline.run import run_labels
from storage.labelstore import LabelStore

PANOS = ["0006", "0009", "0010"]
LABEL_HEIGHT = 256
CONFIG = LabelConfig(
    depth_teacher="py:replica_teacher:depth",
    semantic_teacher="py:replica_teacher:semantic",
    normal_teacher="py:replica_teacher:normals",
    patch_size=192,
    erp_height=LABEL_HEIGHT,
)


@pytest.fixture()
def replica(real_data, tmp_path, monkeypatch):
    """A data folder with one stand-in image per Replica panorama (its normals picture: there
    is no photo), and the plugin pointed at the reference data."""
    monkeypatch.setenv("MTPANO_REAL_DATA", str(real_data))
    data = tmp_path / "data"
    data.mkdir()
    for pano in PANOS:
        shutil.copyfile(real_data / "replica" / f"{pano}_normals.png", data / f"{pano}.png")
    return data


def centre_mean(values: np.ndarray) -> np.ndarray:
    """(..., 4h, 4w) -> (..., h, w): mean of the central 2x2 pixels of every 4x4 block."""
    *lead, H, W = values.shape
    blocks = values.reshape(*lead, H // 4, 4, W // 4, 4)[..., 1:3, :, 1:3]  # (..., h, 2, w, 2)
    return blocks.mean(axis=(-3, -1))


def reference(pano: str) -> dict[str, np.ndarray]:
    gt = replica_teacher.ground_truth(pano)
    range_ = gt["range"][0, 0].numpy().astype(np.float64)
    normals = F.normalize(gt["normals"][0].double(), dim=0).numpy()
    segments = gt["segments"][0, 0].numpy()
    H, W = segments.shape
    blocks = segments.reshape(H // 4, 4, W // 4, 4)[:, 1:3, :, 1:3]  # (h,2,w,2)
    central = blocks.transpose(0, 2, 1, 3).reshape(H // 4, W // 4, 4)  # (h,w,2,2) -> (h,w,4)
    depth = centre_mean(range_)
    # Depth edges: where the four central pixels spread by more than 2%.
    blocks = range_.reshape(H // 4, 4, W // 4, 4)[:, 1:3, :, 1:3]
    smooth = (np.nanmax(blocks, axis=(1, 3)) - np.nanmin(blocks, axis=(1, 3))) < 0.02 * depth
    n = centre_mean(normals)
    return {"depth": depth, "smooth": smooth, "normals": n / np.linalg.norm(n, axis=0), "segments": central}


def label(data, out, config: LabelConfig) -> LabelStore:
    summary = run_labels(str(data), str(out), config, RunOptions(in_process=True))
    assert summary.exit_code == 0 and summary.ok == len(PANOS), summary.failed
    return LabelStore.open(str(out))


def test_replica_ground_truth_comes_back(replica, tmp_path):
    store = label(replica, tmp_path / "store", CONFIG)
    assert store.spec.class_names == replica_teacher.CLASS_NAMES
    assert store.spec.teachers["depth"]["spec"] == "py:replica_teacher:depth"
    for row in store.rows():
        ref = reference(row["pano_id"])
        labels = store.read(row["index"])
        depth = labels["depth"].astype(np.float64)
        valid = np.isfinite(ref["depth"])
        assert np.isfinite(depth[valid]).mean() > 0.99
        both = valid & np.isfinite(depth) & ref["smooth"]
        absrel = np.abs(depth[both] - ref["depth"][both]) / ref["depth"][both]
        assert absrel.mean() <= 0.005, absrel.mean()
        assert both.mean() > 0.85  # the comparison covers most of the panorama
        normals = labels["normals"].astype(np.float64)
        ok = np.isfinite(normals).all(0) & np.isfinite(ref["normals"]).all(0) & ref["smooth"]
        cos = np.clip((normals[:, ok] * ref["normals"][:, ok]).sum(0) / np.linalg.norm(normals[:, ok], axis=0), -1, 1)
        assert np.degrees(np.arccos(cos)).mean() <= 1.0
        agree = (labels["semantic"][..., None] == ref["segments"]).any(-1)
        assert agree.mean() >= 0.995, agree.mean()
        assert row["depth_coverage"] > 0.99 and row["semantic_coverage"] == 1.0


def test_replica_scale_errors_are_aligned_away(replica, tmp_path):
    config = replace(CONFIG, depth_teacher="py:replica_teacher:depth_scaled", semantic_teacher="none")
    store = label(replica, tmp_path / "scaled", config)
    for row in store.rows():
        ref = reference(row["pano_id"])
        depth = store.read(row["index"], ["depth"])["depth"].astype(np.float64)
        both = np.isfinite(ref["depth"]) & np.isfinite(depth)
        absrel = np.abs(depth[both] - ref["depth"][both]) / ref["depth"][both]
        assert absrel.mean() <= 0.02, absrel.mean()
        scales = np.array(row["depth_scales"])
        assert scales.max() / scales.min() > 1.2
