"""`mtpano import`: datasets' ground truth as stores of kind "ground_truth".

Each format gets small files written in its public layout with known values (32 x 64 or
smaller), and the imported store is checked for depth in metres, class ids, normals in our
frame (docs/conventions.md), splits, resuming, bad files and usage errors. The `synth` cases
and the usage errors run the installed command end to end; the real Replica samples of
../shared/data/real are imported as they are.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from quality_stores import mtpano_here

from evaluation.classes import NYU40_CLASSES, STANFORD2D3D_CLASSES
from mtpano import inspection
from mtpano.preview import panel_names, render_preview
from mtpano.report import write_report
from pipeline.images import find_panoramas
from spherical.ade20k import ADE20K_CLASSES
from spherical.erp import erp_rays
from spherical.rotation import yaw_matrix
from storage import groundtruth
from storage.groundtruth import resample_to_labels
from storage.importers import ImportConfig, UsageError, import_dataset
from storage.importers.base import IDENTITY_FRAME
from storage.importers.frames import to_world_frame
from storage.labelstore import KIND_GROUND_TRUTH, LabelStore, StoreError, StoreSpec
from storage.verify import verify_store
from synthetic.dataset import write_dataset
from synthetic.render import render_erp
from synthetic.scene import generate_scene

SYNTH_HEIGHT = 32


def _labels(store: LabelStore, index: int) -> dict[str, np.ndarray]:
    """A panorama's arrays in float32 (depth, normals, confidences) as stored."""
    arrays = store.read(index)
    return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in arrays.items()}


# ---------------------------------------------------------------------- synth
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Three synthetic rooms at 32 x 64 with a hole in one depth map, imported by the command."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root / "data", [0, 1, 2], height=SYNTH_HEIGHT)
    depth_file = root / "data" / "gt" / "room_00001_depth.png"
    depth = groundtruth.read_depth(depth_file)
    depth[10:14, 20:30] = np.nan  # no value there: NaN and confidence 0 after import
    groundtruth.write_depth(depth_file, depth)
    out = mtpano_here("import", root / "data", "--format", "synth", "--out", root / "gt")
    return root, out


def test_synth_import_holds_the_ground_truth_exactly(synth):
    root, out = synth
    assert out.returncode == 0, out.stderr
    assert "3 panoramas in" in out.stderr and "3 ok, 0 failed" in out.stderr
    store = LabelStore.open(str(root / "gt"))
    assert store.spec.kind == KIND_GROUND_TRUTH and store.group.attrs["kind"] == "ground_truth"
    assert store.spec.depth_kind == "metric_range" and store.spec.layout == "" and store.spec.patch_size == 0
    assert store.spec.source["format"] == "synth" and store.spec.source["path"] == str((root / "data").resolve())
    assert store.spec.erp_height == SYNTH_HEIGHT
    # The ids `mtpano labels DATA/images` gives, so label and ground-truth stores pair up by id.
    assert [e.pano_id for e in store.entries()] == [p for p, _ in find_panoramas(str(root / "data" / "images"))]
    gt = root / "data" / "gt"
    for entry in store.entries():
        arrays = _labels(store, entry.index)
        depth = groundtruth.read_depth(gt / f"{entry.pano_id}_depth.png")
        assert np.array_equal(np.isnan(arrays["depth"]), np.isnan(depth))
        assert np.nanmax(np.abs(arrays["depth"] - depth) / depth) < 1e-3  # float16 keeps 3 digits
        assert np.array_equal(arrays["semantic"], groundtruth.read_semantic(gt / f"{entry.pano_id}_semantic.png"))
        normals = groundtruth.read_normals(gt / f"{entry.pano_id}_normals.png")
        assert np.nanmax(np.abs(arrays["normals"] - normals)) < 2e-3
        image = cv2.imread(entry.source)[..., ::-1].transpose(2, 0, 1)  # (H,W,3) BGR -> (3,H,W) RGB
        assert np.array_equal(arrays["rgb"], image)
        for task in ("depth", "semantic", "normals"):
            has = inspection.quality.label_mask(task, arrays)
            assert np.array_equal(arrays[f"{task}_confidence"], has.astype(np.float32))
    hole = _labels(store, 1)
    assert np.isnan(hole["depth"][10:14, 20:30]).all() and (hole["depth_confidence"][10:14, 20:30] == 0).all()
    rows = {r["pano_id"]: r for r in store.rows()}
    assert rows["room_00001"]["depth_coverage"] == pytest.approx(1 - 40 / (32 * 64))
    assert rows["room_00000"]["normals_depth_walls_deg"] < 1.0  # exact normals agree with their depth


def test_synth_store_verifies_and_inspects(synth):
    root, _ = synth
    out = mtpano_here("verify", root / "gt")
    assert out.returncode == 0 and "(ground_truth): clean (3 panoramas: 3 ok" in out.stderr, out.stderr
    out = mtpano_here("inspect", root / "gt", "--recompute")
    assert out.returncode == 0, out.stderr
    assert "ground_truth" in out.stdout and f"kind ground_truth (synth from {(root / 'data').resolve()})" in out.stdout
    assert "layout" not in out.stdout and "room_00002" in out.stdout
    store = LabelStore.open(str(root / "gt"))
    rows = inspection.load_figures(store, recompute=True)
    assert rows[1]["depth_coverage"] == pytest.approx(1 - 40 / (32 * 64)) and "depth_seam_error" not in rows[1]
    image, panels = render_preview(store.spec, rows[0], store.read(0), None, panel_height=64)
    assert [p.name for p in panels] == panel_names(store.spec) and "patches" not in panel_names(store.spec)
    assert image.shape[0] > 4 * 64
    files = write_report(store, root / "report", worst=1, panel_height=64)
    page = files.index.read_text()
    assert '<th class="id">kind</th><td class="text">ground_truth (synth from' in page and ">layout<" not in page
    assert len(files.previews) == 1 and files.previews[0].is_file()


def test_synth_resumes_and_fails_bad_files_alone(tmp_path):
    write_dataset(tmp_path / "data", [3, 4, 5], height=16)
    bad = tmp_path / "data" / "gt" / "room_00004_semantic.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    summary = import_dataset(tmp_path / "data", str(tmp_path / "gt"), ImportConfig("synth"))
    assert summary.exit_code == 3 and [p for p, _ in summary.failed] == ["room_00004"]
    assert "room_00004_semantic.png" in summary.failed[0][1] and "\n" not in summary.failed[0][1]
    assert verify_store(str(tmp_path / "gt")).clean  # a failed row keeps its fill values
    bad.write_bytes(good)
    summary = import_dataset(tmp_path / "data", str(tmp_path / "gt"), ImportConfig("synth"))
    assert (summary.done_before, summary.imported, summary.failed) == (2, 1, [])
    # A new room in the folder is appended on the next run; the others are not redone.
    write_dataset(tmp_path / "data", [6], height=16)
    summary = import_dataset(tmp_path / "data", str(tmp_path / "gt"), ImportConfig("synth"))
    assert (summary.total, summary.done_before, summary.imported) == (4, 3, 1)


def test_synth_height_resamples_with_the_ground_truth_rules(tmp_path):
    write_dataset(tmp_path / "data", [7], height=SYNTH_HEIGHT)
    summary = import_dataset(tmp_path / "data", str(tmp_path / "gt"), ImportConfig("synth", height=16))
    assert summary.height == 16 and summary.exit_code == 0
    arrays = _labels(LabelStore.open(str(tmp_path / "gt")), 0)
    gt = tmp_path / "data" / "gt"
    depth = groundtruth.read_depth(gt / "room_00007_depth.png").reshape(16, 2, 32, 2)  # 2x2 blocks
    assert np.allclose(arrays["depth"], np.nanmean(depth, axis=(1, 3)), rtol=1e-3)  # area average
    semantic = groundtruth.read_semantic(gt / "room_00007_semantic.png")
    assert np.array_equal(arrays["semantic"], semantic[::2, ::2])  # nearest: never a mixed class
    normals = groundtruth.read_normals(gt / "room_00007_normals.png").reshape(3, 16, 2, 32, 2).mean(axis=(2, 4))
    normals /= np.linalg.norm(normals, axis=0, keepdims=True)
    assert np.nanmax(np.abs(arrays["normals"] - normals)) < 2e-3  # averaged, renormalised
    assert arrays["rgb"].shape == (3, 16, 32)


def test_usage_errors_exit_2_with_one_line_and_write_nothing(synth, tmp_path):
    root, _ = synth
    out = mtpano_here("import", root / "data", "--format", "nope", "--out", tmp_path / "a")
    assert out.returncode == 2 and out.stderr.strip() == "error: unknown format 'nope'; formats: " + ", ".join(
        ["synth", "stanford2d3d", "structured3d", "matterport3d", "replica"]
    )
    assert not (tmp_path / "a").exists()
    # Another source into an existing store: refused, the store untouched.
    other = tmp_path / "other"
    shutil.copytree(root / "data", other)
    before = sorted(p.name for p in (root / "gt").rglob("*"))
    out = mtpano_here("import", other, "--format", "synth", "--out", root / "gt")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "holds a store made otherwise" in out.stderr and "--overwrite" in out.stderr
    assert sorted(p.name for p in (root / "gt").rglob("*")) == before
    shutil.copytree(root / "gt", tmp_path / "gt")
    summary = import_dataset(other, str(tmp_path / "gt"), ImportConfig("synth", overwrite=True))
    assert summary.imported == 3 and LabelStore.open(str(tmp_path / "gt")).spec.source["path"] == str(other)
    with pytest.raises(UsageError, match=f"^{tmp_path / 'missing'}: no such folder$"):
        import_dataset(tmp_path / "missing", str(tmp_path / "b"), ImportConfig("synth"))
    with pytest.raises(UsageError, match="format synth has no split 'val'; it has no standard splits"):
        import_dataset(root / "data", str(tmp_path / "b"), ImportConfig("synth", split="val"))
    with pytest.raises(UsageError, match="not a `mtpano synth` folder"):
        import_dataset(tmp_path, str(tmp_path / "b"), ImportConfig("synth"))
    assert not (tmp_path / "b").exists()


def test_store_kinds_are_backward_compatible_and_ground_truth_confidence_is_verified(tmp_path):
    write_dataset(tmp_path / "data", [8], height=16)
    import_dataset(tmp_path / "data", str(tmp_path / "gt"), ImportConfig("synth"))
    store = LabelStore.open(str(tmp_path / "gt"), mode="r+")
    # A spec written before kinds existed reads as a label store with no source.
    old = {k: v for k, v in store.spec.to_json().items() if k not in ("kind", "source")}
    assert (StoreSpec.from_json(old).kind, StoreSpec.from_json(old).source) == ("labels", {})
    with pytest.raises(StoreError, match="store kind must be one of"):
        replace(store.spec, kind="teacher_labels")
    arrays = store.read(0)
    arrays["depth_confidence"][3, 4] = 0.5  # a ground-truth label is certain
    store.write_arrays(0, arrays)
    problems = [str(p) for p in verify_store(str(tmp_path / "gt")).problems]
    assert problems == ["room_00008 (index 0): depth_confidence: 1 pixel not 1 where labelled or not 0 elsewhere "
                        "(ground truth)"]  # fmt: skip


# ---------------------------------------------------------------------- benchmark layouts
def _room(seed: int, height: int = 32):
    """A rendered synthetic room: exact range, world normals (ours) and ADE20K ids to encode."""
    render = render_erp(generate_scene(seed), height)
    return {
        "rgb": np.round(render.rgb.numpy().transpose(1, 2, 0) * 255).astype(np.uint8),  # (3,H,W) -> (H,W,3)
        "range": render.range.numpy(),
        "normals": render.normals.numpy(),
        "semantic": render.semantic.numpy(),
    }


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # RGB -> BGR


def _write_gray(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _encode_normals(normals: np.ndarray, matrix: np.ndarray, centre: float, scale: float) -> np.ndarray:
    """(3,H,W) normals in our frame -> (H,W,3) uint8 in a dataset frame n_ds = matrix @ n."""
    n = np.einsum("ab,bhw->ahw", matrix, normals)  # (3,H,W)
    return np.clip(np.round(n * scale + centre), 0, 255).astype(np.uint8).transpose(1, 2, 0)  # (3,H,W) -> (H,W,3)


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles between (3,H,W) unit vector maps, degrees (NaN where either is missing)."""
    return np.degrees(np.arccos(np.clip((a.astype(np.float64) * b).sum(0), -1.0, 1.0)))


def _our_from_z_up(yaw_deg: float) -> np.ndarray:
    """R_yaw(yaw) @ M: a z-up dataset frame (+y forward) turned by `yaw` into ours."""
    z_up = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    return yaw_matrix(math.radians(yaw_deg)).double().numpy() @ z_up


STANFORD_LABELS = ["<UNK>_0_<UNK>_0_0", "wall_1_office_1_1", "floor_1_office_1_1", "ceiling_1_office_1_1",
                   "chair_3_office_1_1", "clutter_7_office_1_1"]  # fmt: skip


def _write_stanford(root: Path, area: str, name: str, seed: int, heading_deg: float) -> dict:
    """One panorama in the 2D-3D-Semantics layout; its normals in a z-up frame turned by heading_deg."""
    room = _room(seed)
    pano = root / area / "pano"
    stem = f"camera_{name}_office_1_frame_equirectangular_domain_"
    _write_rgb(pano / "rgb" / f"{stem}rgb.png", room["rgb"])
    depth = np.round(room["range"] * 512).astype(np.uint16)
    depth[:2] = 65535  # missing
    _write_gray(pano / "depth" / f"{stem}depth.png", depth)
    index = np.full(room["semantic"].shape, 5, np.int64)  # clutter
    for label, ade in ((1, "wall"), (2, "floor"), (3, "ceiling")):
        index[room["semantic"] == ADE20K_CLASSES.index(ade)] = label
    index[-2:] = 0x0D0D0D  # missing
    index[5, :8] = 0  # <UNK>
    colors = np.stack((index >> 16, (index >> 8) & 255, index & 255), -1).astype(np.uint8)
    _write_rgb(pano / "semantic" / f"{stem}semantic.png", colors)
    to_dataset = _our_from_z_up(heading_deg).T  # n_ds = (R_yaw M)^T n_ours
    normals = _encode_normals(room["normals"], to_dataset, 127.5, 127.5)
    normals[4:6] = 128  # #808080: the mesh is missing
    _write_rgb(pano / "normal" / f"{stem}normals.png", normals)
    return room


def test_stanford2d3d_depth_classes_normals_and_splits(tmp_path):
    src = tmp_path / "s2d3d"
    (src / "assets").mkdir(parents=True)
    (src / "assets" / "semantic_labels.json").write_text(json.dumps(STANFORD_LABELS))
    room = _write_stanford(src, "area_1", "aaa", 11, heading_deg=37.0)
    _write_stanford(src, "area_5a", "bbb", 12, heading_deg=-120.0)
    _write_stanford(src, "area_5b", "ccc", 13, heading_deg=0.0)
    (src / "area_5b" / "pano" / "normal" / "camera_ccc_office_1_frame_equirectangular_domain_normals.png").unlink()

    summary = import_dataset(src, str(tmp_path / "train"), ImportConfig("stanford2d3d", split="train"))
    assert summary.exit_code == 0 and summary.total == 1
    store = LabelStore.open(str(tmp_path / "train"))
    assert store.spec.class_names == STANFORD2D3D_CLASSES and store.spec.source["split"] == "train"
    rows = store.rows()
    rgb_path = src / "area_1/pano/rgb/camera_aaa_office_1_frame_equirectangular_domain_rgb.png"
    assert rows[0]["pano_id"] == "area_1/pano/rgb/camera_aaa_office_1_frame_equirectangular_domain_rgb"
    # The id `mtpano labels` gives the RGB file through a list file in SRC.
    (src / "rgb.txt").write_text(str(rgb_path.relative_to(src)) + "\n")
    assert [p for p, _ in find_panoramas(str(src / "rgb.txt"))] == [rows[0]["pano_id"]]
    arrays = _labels(store, 0)
    assert np.isnan(arrays["depth"][:2]).all() and (arrays["depth_confidence"][:2] == 0).all()
    assert np.nanmax(np.abs(arrays["depth"][2:] - room["range"][2:])) < 5e-3  # 1/512 m steps, float16
    expected = np.full(room["semantic"].shape, STANFORD2D3D_CLASSES.index("clutter"), np.uint8)
    for ade in ("wall", "floor", "ceiling"):
        expected[room["semantic"] == ADE20K_CLASSES.index(ade)] = STANFORD2D3D_CLASSES.index(ade)
    expected[-2:] = 255
    expected[5, :8] = 255
    assert np.array_equal(arrays["semantic"], expected)
    # Normals: the global frame's heading (37°) is recovered from the depth.
    assert rows[0]["normals_yaw_deg"] == pytest.approx(37.0, abs=1.0) and rows[0]["normals_flipped"] < 0.01
    angles = _angles_deg(arrays["normals"], room["normals"])
    assert np.isnan(arrays["normals"][:, 4:6]).all()
    assert np.nanmean(angles) < 1.0 and np.nanpercentile(angles, 99) < 2.0
    assert verify_store(str(tmp_path / "train")).clean

    summary = import_dataset(src, str(tmp_path / "val"), ImportConfig("stanford2d3d", split="val"))
    assert summary.total == 2 and [p.split("/")[0] for p, _ in summary.failed] == ["area_5b"]
    assert summary.failed[0][1].startswith("missing normals file ")
    val = LabelStore.open(str(tmp_path / "val"))
    assert val.rows()[0]["normals_yaw_deg"] == pytest.approx(-120.0, abs=1.0)
    with pytest.raises(UsageError, match="no split 'test'; its splits: train, val, fold1_train"):
        import_dataset(src, str(tmp_path / "x"), ImportConfig("stanford2d3d", split="test"))
    (src / "assets" / "semantic_labels.json").unlink()
    with pytest.raises(UsageError, match=r"no assets/semantic_labels\.json or semantic_labels\.json"):
        import_dataset(src, str(tmp_path / "x"), ImportConfig("stanford2d3d"))
    assert not (tmp_path / "x").exists()


def _write_structured3d(root: Path, scene: int, room_id: int, seed: int, heading_deg: float, palette: bool) -> dict:
    room = _room(seed)
    folder = root / f"scene_{scene:05d}" / "2D_rendering" / str(room_id) / "panorama" / "full"
    _write_rgb(folder / "rgb_rawlight.png", room["rgb"])
    depth = np.round(room["range"] * 1000).astype(np.uint16)
    depth[:, :3] = 0  # no reading
    _write_gray(folder / "depth.png", depth)
    nyu40 = np.full(room["semantic"].shape, NYU40_CLASSES.index("otherfurniture") + 1, np.uint8)
    for ade, nyu in (("wall", "wall"), ("floor", "floor"), ("ceiling", "ceiling"), ("door", "door")):
        nyu40[room["semantic"] == ADE20K_CLASSES.index(ade)] = NYU40_CLASSES.index(nyu) + 1
    nyu40[3, :10] = 0  # no label
    if palette:  # a palette PNG: OpenCV would read its colours, not its ids
        image = Image.fromarray(nyu40, mode="P")
        image.putpalette([(37 * i) % 256 for i in range(768)])
        image.save(folder / "semantic.png")
    else:
        _write_gray(folder / "semantic.png", nyu40)
    _write_rgb(folder / "normal.png", _encode_normals(room["normals"], _our_from_z_up(heading_deg).T, 128.0, 128.0))
    return {**room, "nyu40": nyu40}


def test_structured3d_depth_nyu40_normals_and_splits(tmp_path):
    src = tmp_path / "st3d"
    train = _write_structured3d(src, 12, 485142, 21, heading_deg=0.0, palette=True)
    val = _write_structured3d(src, 3001, 7, 22, heading_deg=90.0, palette=False)
    bad = _write_structured3d(src, 3002, 8, 23, heading_deg=0.0, palette=False)
    _write_gray(src / "scene_03002/2D_rendering/8/panorama/full/semantic.png", np.where(bad["nyu40"] == 1, 41, 2))
    _write_structured3d(src, 3300, 9, 24, heading_deg=0.0, palette=False)

    summary = import_dataset(src, str(tmp_path / "val"), ImportConfig("structured3d", split="val"))
    assert summary.total == 2 and summary.failed == [
        ("scene_03002/2D_rendering/8/panorama/full/rgb_rawlight", f"{src}/scene_03002/2D_rendering/8/panorama/full/"
         "semantic.png: ids up to 41, NYU40 has 1..40")
    ]  # fmt: skip
    store = LabelStore.open(str(tmp_path / "val"))
    assert store.spec.class_names == NYU40_CLASSES and store.spec.erp_height == 32
    row = store.rows()[0]
    assert row["pano_id"] == "scene_03001/2D_rendering/7/panorama/full/rgb_rawlight"
    assert row["normals_yaw_deg"] == 90.0  # fitted, snapped to the axis-aligned frame's steps
    arrays = _labels(store, 0)
    assert np.isnan(arrays["depth"][:, :3]).all()
    assert np.nanmax(np.abs(arrays["depth"][:, 3:] - val["range"][:, 3:])) < 5e-3
    assert np.array_equal(arrays["semantic"], np.where(val["nyu40"] == 0, 255, val["nyu40"] - 1))
    angles = _angles_deg(arrays["normals"], val["normals"])
    assert np.nanmean(angles) < 0.6 and np.nanpercentile(angles, 99) < 1.5
    assert verify_store(str(tmp_path / "val")).clean

    import_dataset(src, str(tmp_path / "train"), ImportConfig("structured3d", split="train"))
    arrays = _labels(LabelStore.open(str(tmp_path / "train")), 0)
    assert np.array_equal(arrays["semantic"], np.where(train["nyu40"] == 0, 255, train["nyu40"] - 1))  # palette ids
    summary = import_dataset(src, str(tmp_path / "test"), ImportConfig("structured3d", split="test"))
    assert summary.total == 1 and summary.exit_code == 0


def test_matterport3d_depth_only_and_splits(tmp_path):
    src = tmp_path / "mp3d"
    depths = {}
    for scene, seed in (("17DRP5sb8fy", 31), ("2azQ1b91cZZ", 32), ("2t7WUuJeko7", 33)):
        room = _room(seed)
        _write_rgb(src / scene / "pano_skybox_color" / f"{scene[:4]}pano.jpg", room["rgb"])
        depth = depths[scene] = np.round(room["range"] * 4000).astype(np.uint16)
        depth[10, 10:20] = 0  # no depth
        _write_gray(src / scene / "pano_depth" / f"{scene[:4]}pano.png", depth)
    _write_gray(src / "2azQ1b91cZZ" / "pano_depth" / "2azQpano.png", np.zeros((32, 64), np.uint8))  # 8-bit: bad
    summary = import_dataset(src, str(tmp_path / "all"), ImportConfig("matterport3d", height=16))
    assert summary.total == 3 and [p for p, _ in summary.failed] == ["2azQ1b91cZZ/pano_skybox_color/2azQpano"]
    assert "expected a 1-channel uint16 image, got 1 channel(s) of uint8" in summary.failed[0][1]
    store = LabelStore.open(str(tmp_path / "all"))
    assert store.spec.tasks == ("depth",) and store.spec.class_names == () and store.spec.erp_height == 16
    arrays = _labels(store, 0)
    metres = np.where(depths["17DRP5sb8fy"] > 0, depths["17DRP5sb8fy"] / 4000.0, np.nan)
    expected = np.nanmean(metres.reshape(16, 2, 32, 2), axis=(1, 3))  # area average over the valid pixels
    assert np.allclose(arrays["depth"], expected, rtol=2e-3)
    assert verify_store(str(tmp_path / "all")).clean
    summary = import_dataset(src, str(tmp_path / "test"), ImportConfig("matterport3d", split="test"))
    assert [p for p in (r["pano_id"] for r in LabelStore.open(str(tmp_path / "test")).rows())] == [
        "2t7WUuJeko7/pano_skybox_color/2t7Wpano"
    ]


# ---------------------------------------------------------------------- the real Replica samples
def test_real_replica_imports_in_our_frame(real_data, tmp_path):
    src = real_data / "replica"
    summary = import_dataset(src, str(tmp_path / "replica"), ImportConfig("replica", height=64))
    assert summary.exit_code == 0 and summary.total == 3
    store = LabelStore.open(str(tmp_path / "replica"))
    assert store.spec.tasks == ("depth", "normals") and store.spec.source["has_rgb"] is False
    assert verify_store(str(tmp_path / "replica")).clean
    rays = erp_rays(64, dtype=torch.float64).numpy().transpose(2, 0, 1)  # (H,W,3) -> (3,H,W)
    for row in store.rows():
        arrays = _labels(store, int(row["index"]))
        assert not arrays["rgb"].any()  # no photo: black, and the source says so
        raw = groundtruth.read_depth(src / f"{row['pano_id']}_depth.png")  # value / 4096, metres
        expected = np.nanmean(raw.reshape(64, 16, 128, 16), axis=(1, 3))  # 16x16 blocks
        assert np.allclose(arrays["depth"], expected, rtol=2e-3, equal_nan=True)
        assert np.nanmin(arrays["depth"]) > 0.3 and np.nanmax(arrays["depth"]) < 15.0  # metres, indoors
        n = arrays["normals"]
        floor = n[:, 56:]  # latitude below -67.5°: the floor under the camera
        assert np.degrees(np.arccos(np.nanmean(floor[1]))) > 175.0  # (0, -1, 0)
        ceiling = n[:, :8]
        assert np.nanmean(ceiling[1]) > 0.95  # (0, 1, 0)
        assert np.nanmean((n * rays).sum(0) < 0) > 0.999  # facing the camera
        assert row["normals_depth_walls_deg"] < 10.0
    # The files' walls carry a heading of their own per panorama: without the fit they disagree.
    headings = sorted(round(r["normals_yaw_deg"]) for r in store.rows())
    assert headings == [-165, 52, 130]
    raw = {r["pano_id"]: groundtruth.read_normals(src / f"{r['pano_id']}_normals.png") for r in store.rows()}
    unfitted = to_world_frame(resample_to_labels("normals", raw["0006"], 64), _labels(store, 0)["depth"],
                              IDENTITY_FRAME)[1]  # fmt: skip
    assert unfitted["normals_depth_walls_deg"] > 30.0
