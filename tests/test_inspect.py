"""`mtpano inspect` through the installed command, on a real store of synthetic rooms (one of
its panoramas failed), with previews and ground truth."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest
from quality_stores import label, make_rooms, mtpano_here

from mtpano.preview import BACKGROUND, SIDE_WIDTH, TITLE_HEIGHT, panel_names, preview_layout
from mtpano.visualize import colorize_depth, colorize_normals, colorize_scalar, colorize_semantic
from spherical.ade20k import ADE20K_PALETTE

SEEDS = [4, 5, 6]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    images = make_rooms(root, SEEDS)
    (images / "broken.png").write_bytes(b"not an image")
    store = label(images, root / "store", normal_teacher="sim:normal_noise=10")
    return root, store, {r["pano_id"]: r for r in store.rows()}


def _ok(rows: dict) -> dict:
    return {k: r for k, r in rows.items() if r["status"] == "ok"}


def test_table_sorted_worst_first_with_a_summary_line(labelled):
    root, _, rows = labelled
    out = mtpano_here("inspect", root / "store", "--sort", "normals_disagreement_deg")
    assert out.returncode == 0, out.stderr
    worst_first = sorted(_ok(rows), key=lambda k: -rows[k]["normals_disagreement_deg"])
    positions = [out.stdout.index(k) for k in [*worst_first, "broken"]]
    assert positions == sorted(positions), out.stdout  # failed panoramas come last
    assert "failed" in out.stdout and "normals" in out.stdout and "seam" in out.stdout
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith("4 panoramas: 3 ok, 1 failed, 0 pending")
    assert "layout icosahedron (20 patches of 64 px, FoV 80°)" in summary and "labels 128x64 metric_range" in summary
    mean = np.mean([r["depth_seam_error"] for r in _ok(rows).values()])
    assert f"depth seam {mean:.3g}" in summary


def test_json_worst_n(labelled):
    root, _, rows = labelled
    out = mtpano_here("inspect", root / "store", "--json", "--worst", "2", "--sort", "normals_disagreement_deg")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["summary"]["ok"] == 3 and data["summary"]["failed"] == 1
    assert data["summary"]["teachers"]["normals"] == "sim:normal_noise=10"
    got = [p["pano_id"] for p in data["panoramas"]]
    assert got == sorted(_ok(rows), key=lambda k: -rows[k]["normals_disagreement_deg"])[:2]
    for p in data["panoramas"]:
        assert p["depth_seam_error"] == rows[p["pano_id"]]["depth_seam_error"]
        assert len(p["semantic_histogram"]) == 150
    means = data["summary"]["means"]
    assert means["depth_coverage"] == pytest.approx(1.0)
    assert means["normals_disagreement_deg"] == pytest.approx(
        np.mean([r["normals_disagreement_deg"] for r in _ok(rows).values()])
    )


def test_csv_with_ground_truth_and_recomputed_figures(labelled):
    root, _, rows = labelled
    out = mtpano_here("inspect", root / "store", "--csv", "--gt", root / "gt", "--recompute")
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["pano_id"] for r in table] == [r["pano_id"] for r in sorted(rows.values(), key=lambda r: r["index"])]
    assert "3 ok, 1 failed" in out.stderr  # the summary goes to stderr, the CSV stays clean
    for r in table:
        if r["status"] != "ok":
            assert r["depth_gt_absrel"] == "" and r["error"] == "not a PNG file"
            continue
        manifest = rows[r["pano_id"]]
        for name in ("depth_seam_error", "normals_seam_error", "semantic_seam_wrap", "depth_coverage"):
            assert float(r[name]) == pytest.approx(manifest[name], rel=1e-12, abs=1e-12), name
        assert float(r["depth_gt_absrel"]) < 0.01 and float(r["semantic_gt_accuracy"]) > 0.97
        assert 1.0 < float(r["normals_gt_mean_deg"]) < 20.0  # the noisy normals teacher shows


def test_one_panorama_per_task_with_a_ground_truth_file(labelled):
    root, _, rows = labelled
    out = mtpano_here("inspect", root / "store", "room_00005", "--gt-semantic", root / "gt" / "room_00005_semantic.png")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"room_00005 (index {rows['room_00005']['index']}) · ok")
    for task, figure in (("depth", "depth_align_residual"), ("normals", "normals_seam_error")):
        line = next(x for x in lines if figure in x)
        assert line.split()[1] == task
    value = float(next(x for x in lines if "semantic_gt_accuracy" in x).split()[5].rstrip("%")) / 100
    assert 0.97 < value <= 1.0
    assert "depth_gt_absrel" not in out.stdout  # only the semantic ground truth was given
    assert "classes: " in out.stdout and "wall" in out.stdout


def test_preview_png_has_every_panel(labelled, tmp_path):
    root, store, rows = labelled
    path = tmp_path / "preview.png"
    P = 96
    out = mtpano_here(
        "inspect", root / "store", "room_00006", "--preview", path, "--gt", root / "gt", "--panel-height", P, "--json"
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["depth_gt_absrel"] < 0.01 and row["normals_gt_mean_deg"] < 20.0
    image = cv2.imread(str(path))[..., ::-1]
    names = panel_names(store.spec, ("depth", "semantic", "normals"))
    assert names == [
        "panorama", "depth", "semantic", "normals", "patches", "depth_confidence", "semantic_confidence",
        "normals_confidence", "depth_error", "semantic_error", "normals_error",
    ]  # fmt: skip
    size, panels = preview_layout(names, P)
    assert image.shape == (*size, 3)
    assert all(p.name in out.stderr for p in panels)
    boxes = {p.name: image[p.y : p.y + p.height, p.x : p.x + p.width] for p in panels}
    assert all(b.shape == (P, 2 * P, 3) for b in boxes.values())
    arrays = store.read(int(rows["room_00006"]["index"]))

    def fit(rgb):
        return cv2.resize(rgb, (2 * P, P), interpolation=cv2.INTER_NEAREST)

    depth = arrays["depth"].astype(np.float64)
    lo, hi = np.percentile(depth[np.isfinite(depth)], [2, 98])
    np.testing.assert_array_equal(boxes["depth"], fit(colorize_depth(depth, lo, hi)))
    np.testing.assert_array_equal(boxes["semantic"], fit(colorize_semantic(arrays["semantic"])))
    np.testing.assert_array_equal(boxes["normals"], fit(colorize_normals(arrays["normals"])))
    for task in ("depth", "semantic", "normals"):
        conf = arrays[f"{task}_confidence"].astype(np.float32)
        np.testing.assert_array_equal(boxes[f"{task}_confidence"], fit(colorize_scalar(conf)))
    rgb = cv2.resize(arrays["rgb"].transpose(1, 2, 0), (2 * P, P), interpolation=cv2.INTER_LINEAR)
    assert np.abs(boxes["panorama"].astype(int) - rgb).mean() < 1.0
    # Patch layout: white footprint edges over a tinted panorama.
    white = (boxes["patches"] == 255).all(-1).mean()
    assert 0.02 < white < 0.4, white
    # Semantic errors: only grey (right), red (wrong) and black; mostly right.
    colours = {tuple(c) for c in boxes["semantic_error"].reshape(-1, 3)}
    assert colours <= {(90, 90, 90), (230, 40, 40), (0, 0, 0)}
    assert (boxes["semantic_error"] == (90, 90, 90)).all(-1).mean() > 0.95
    # Every panel has a title above it, and the legend lists the most frequent class's colour.
    for p in panels:
        title = image[p.y - TITLE_HEIGHT : p.y, p.x : p.x + p.width]
        assert (np.abs(title.astype(int) - BACKGROUND).sum(-1) > 100).sum() > 20, p.name
    sem = next(p for p in panels if p.name == "semantic")
    legend = image[sem.y : sem.y + P, sem.x + sem.width : sem.x + sem.width + SIDE_WIDTH]
    top = np.bincount(arrays["semantic"].ravel()[arrays["semantic"].ravel() != 255]).argmax()
    assert (legend == ADE20K_PALETTE[top]).all(-1).sum() >= 100  # its 12x12 swatch


def test_usage_errors_are_one_line(labelled):
    root, _, _ = labelled
    out = mtpano_here("inspect", root / "store", "room_99999")
    assert out.returncode == 2 and "no panorama 'room_99999' in the store (4 panoramas)" in out.stderr
    out = mtpano_here("inspect", root / "store", "--sort", "sharpness")
    assert out.returncode == 2 and "unknown figure 'sharpness'" in out.stderr
