"""Quality figures (pipeline/quality.py, docs/quality.md): hand-computed values on tiny arrays,
and on real stores of synthetic rooms the figures move the right way as simulated teacher
errors grow."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from quality_stores import HARD_BORDERS, label, make_rooms

from pipeline import quality
from pipeline.quality import SeamGeometry
from storage import groundtruth
from storage.labelstore import StoreSpec

SEEDS = [1, 2, 3]
# Simulated errors from none to large, for all three tasks at once.
LEVELS = [
    {"depth_teacher": "sim", "normal_teacher": "sim", "semantic_teacher": "sim"},
    {
        "depth_teacher": "sim:scale_error=0.1",
        "normal_teacher": "sim:normal_noise=5,normal_noise_region=1",
        "semantic_teacher": "sim:confusion=0.6,confusion_width=2",
    },
    {
        "depth_teacher": "sim:scale_error=0.3",
        "normal_teacher": "sim:normal_noise=15,normal_noise_region=1",
        "semantic_teacher": "sim:confusion=0.9,confusion_width=4",
    },
]


# ---------------------------------------------------------------------- hand-computed values
def _spec(*tasks: str, depth_kind: str | None = "metric_range") -> StoreSpec:
    """A 2 x 4 store of `tasks` (no patch layout), for gt_figures on hand-made arrays."""
    return StoreSpec(
        erp_height=2,
        tasks=tasks,
        depth_kind=depth_kind if "depth" in tasks else None,
        class_names=("a", "b", "c", "d") if "semantic" in tasks else (),
        teachers={},
        layout="",
        fov_deg=(),
        patch_size=0,
    )


def test_depth_metrics_by_hand():
    depth = np.array([[1.0, 2.0, 4.0, np.nan], [np.nan] * 4])
    gt = np.array([[1.0, 4.0, 2.0, 5.0], [np.nan] * 4])
    m = quality.gt_figures(_spec("depth"), {"depth": depth}, {"depth": gt})
    # Three compared pixels: relative errors 0, 0.5, 1; squared errors 0, 4, 4; ratios 1, 2, 2.
    assert m["depth_gt_absrel"] == pytest.approx(0.5)
    assert m["depth_gt_rmse"] == pytest.approx(math.sqrt(8.0 / 3.0))
    assert m["depth_gt_delta1"] == pytest.approx(1.0 / 3.0)


def test_relative_depth_is_fitted_in_disparity_first():
    gt = np.array([[1.0, 2.0, 4.0, 5.0], [8.0, 3.0, 6.0, np.nan]])
    disparity = 2.0 / gt + 0.3  # aligned disparity: the truth up to a global scale and shift
    spec = _spec("depth", depth_kind="relative_disparity")
    assert quality.gt_figures(spec, {"depth": disparity}, {"depth": gt})["depth_gt_absrel"] == pytest.approx(
        0.0, abs=1e-9
    )
    errors = quality.error_maps(spec, {"depth": disparity}, {"depth": gt})["depth"]
    assert np.nanmax(errors) < 1e-9 and np.isnan(errors[1, 3])
    # Metric stores are compared as they are.
    assert quality.gt_figures(_spec("depth"), {"depth": gt * 1.1}, {"depth": gt})["depth_gt_absrel"] == pytest.approx(
        0.1
    )


def test_normals_metrics_by_hand():
    s, c = math.sin(math.radians(30)), math.cos(math.radians(30))
    normals = np.array([[0, 0, 1], [0, 0, 1], [1, 0, 0], [np.nan] * 3], dtype=np.float64).T[:, None, :]  # (3,1,4)
    gt = np.array([[0, 0, 1], [0, s, c], [0, 1, 0], [0, 0, 1]], dtype=np.float64).T[:, None, :]
    normals, gt = np.concatenate([normals, np.full_like(normals, np.nan)], 1), np.concatenate([gt, gt], 1)  # (3,2,4)
    m = quality.gt_figures(_spec("normals"), {"normals": normals}, {"normals": gt})
    # Angles 0, 30, 90 degrees (the NaN pixels are not compared).
    assert m["normals_gt_mean_deg"] == pytest.approx(40.0)
    assert m["normals_gt_median_deg"] == pytest.approx(30.0)
    assert m["normals_gt_within_11_25"] == pytest.approx(1.0 / 3.0)


def test_semantic_metrics_by_hand():
    labels = np.array([[1, 1, 2, 0], [2, 255, 3, 255]], dtype=np.uint8)
    gt = np.array([[1, 2, 2, 255], [2, 1, 255, 255]], dtype=np.uint8)
    m = quality.gt_figures(_spec("semantic"), {"semantic": labels}, {"semantic": gt})
    # Compared: 4 pixels (one unlabelled, three ignored), 3 right. IoU(1) = 1/2, IoU(2) = 2/3.
    assert m["semantic_gt_accuracy"] == pytest.approx(0.75)
    assert m["semantic_gt_miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_seam_figures_by_hand():
    """Two patches, each seeing two columns of a 2 x 4 panorama: border pairs are the
    horizontal pairs (u=1, u=2) and the wrap pair (u=3, u=0); the others are interior."""
    sets = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
    seams = SeamGeometry.from_patch_sets(sets, owner=sets - 1)
    assert seams.border_h.tolist() == [[False, True, False, True]] * 2
    assert seams.inner_v.all() and not seams.border_v.any()
    depth = torch.tensor([[1.0, 2.0, 4.0, 8.0]] * 2)
    f = quality.seam_figures("depth", depth, seams)
    # log steps per row: log 2 (interior), log 2 (border), log 2 (interior), 3 log 2 (border, wrap).
    # Observed border steps 4 log 2 against the rows' interior mean log 2 times two pairs: 2.
    assert f["depth_seam_error"] == pytest.approx(2.0)
    assert f["depth_seam_wrap"] == pytest.approx(3.0)
    # A constant map has no interior steps: nothing to compare with.
    assert math.isnan(quality.seam_figures("depth", torch.ones(2, 4), seams)["depth_seam_error"])
    classes = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    g = quality.seam_figures("semantic", classes, seams)
    # Row 0: both border pairs change class, no interior pair does: 2 observed, 0 expected.
    # Row 1: one of its two interior pairs changes (mean 0.5); of its border pairs (1,2) keeps
    # the class and the wrap pair (3,0) changes it: 1 observed, 2 * 0.5 expected. Vertical
    # pairs are all interior. seam_error = (2 + 1) / (0 + 1); wrap = (1 + 1) / (0 + 0.5).
    assert g["semantic_seam_error"] == pytest.approx(3.0)
    assert g["semantic_seam_wrap"] == pytest.approx(4.0)


def _seam_figures_by_loops(task: str, values: np.ndarray, sets: np.ndarray) -> dict[str, float]:
    """The seam figures' definition (docs/quality.md) pair by pair, in float64."""
    H, W = sets.shape

    def step(p: tuple[int, int], q: tuple[int, int]) -> float:
        if task == "depth":
            a, b = values[p], values[q]
            ok = all(np.isfinite(x) and x > 0 for x in (a, b))
            return abs(math.log(a) - math.log(b)) if ok else math.nan
        if task == "normals":
            a, b = values[:, p[0], p[1]], values[:, q[0], q[1]]
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            return math.nan if math.isnan(cos) else math.degrees(math.acos(min(1.0, max(-1.0, cos))))
        a, b = values[p], values[q]
        return float(a != b) if min(a, b) >= 0 and max(a, b) != 255 else math.nan

    sums = {"seam": [0.0, 0.0], "wrap": [0.0, 0.0]}
    for pairs in (
        [[((v, u), (v, (u + 1) % W)) for u in range(W)] for v in range(H)],
        [[((v, u), (v + 1, u)) for u in range(W)] for v in range(H - 1)],
    ):
        for row in pairs:
            kinds = ["inner" if sets[p] == sets[q] else "border" for p, q in row]
            steps = [step(p, q) for p, q in row]
            inner = [x for x, k in zip(steps, kinds, strict=True) if k == "inner" and not math.isnan(x)]
            if not inner:
                continue
            mean = sum(inner) / len(inner)
            for (p, q), x, k in zip(row, steps, kinds, strict=True):
                if math.isnan(x):
                    continue
                if k == "border":
                    sums["seam"][0] += x
                    sums["seam"][1] += mean
                if p[0] == q[0] and q[1] == 0:
                    sums["wrap"][0] += x
                    sums["wrap"][1] += mean
    names = {"seam": f"{task}_seam_error", "wrap": f"{task}_seam_wrap"}
    return {names[k]: (o / e if e > 0 else math.nan) for k, (o, e) in sums.items()}


@pytest.mark.parametrize("holes", [True, False])
@pytest.mark.parametrize("task", ["depth", "semantic", "normals"])
def test_seam_figures_equal_their_definition(task, holes):
    """Random maps with holes, and without (every pair compared, the figures' usual case),
    over random patch sets: the vectorised figures equal the definition computed pair by pair."""
    H, W = 6, 12
    rng = np.random.default_rng(7)
    sets = rng.integers(1, 4, (H, W)).repeat(2, axis=1)[:, :W]  # runs of equal sets: inner and border pairs
    if task == "depth":
        values = rng.uniform(0.5, 4.0, (H, W)).astype(np.float32)
        values[rng.random((H, W)) < 0.15] = np.nan
        values[0, 3], values[2, 5] = 0.0, np.inf  # no labels either
    elif task == "normals":
        values = rng.normal(size=(3, H, W)).astype(np.float32)
        values /= np.linalg.norm(values, axis=0)
        values[:, rng.random((H, W)) < 0.15] = np.nan
    else:
        values = rng.integers(0, 3, (H, W)).astype(np.uint8)
        values[rng.random((H, W)) < 0.15] = 255
    if not holes:  # every pixel labelled
        if task == "semantic":
            values[values == 255] = 1
        else:
            values[~np.isfinite(values) | (values == 0.0)] = 1.0
        if task == "normals":
            values /= np.linalg.norm(values, axis=0)
    seams = SeamGeometry.from_patch_sets(torch.from_numpy(sets), owner=torch.from_numpy(sets) - 1)
    got = quality.seam_figures(task, torch.from_numpy(values), seams)
    expected = _seam_figures_by_loops(task, values.astype(np.float64) if task != "semantic" else values, sets)
    assert got == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in got.values())
    steps = quality.pair_steps(task, torch.from_numpy(values))
    assert bool(torch.isnan(steps[0]).any()) == holes


def test_store_layout_is_rebuilt_from_the_spec(tmp_path):
    """Random layouts are recorded as random:N@seed=S with their FoVs; rebuilt, they are the same."""
    from pipeline.config import LabelConfig
    from pipeline.run import store_spec
    from pipeline.teachers.registry import resolve

    config = LabelConfig(depth_teacher="sim", layout="random:7", layout_seed=5, patch_size=32, erp_height=32)
    spec = store_spec(config, {"depth": resolve("sim", "depth")})
    assert spec.layout == "random:7@seed=5"
    rebuilt, original = quality.store_layout(spec), config.patch_layout()
    np.testing.assert_allclose(rebuilt.yaw_deg, original.yaw_deg)
    np.testing.assert_allclose(rebuilt.fov_x_deg, original.fov_x_deg)


# ---------------------------------------------------------------------- real stores
@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """Rows of three stores of the same rooms, with growing simulated errors, hard borders."""
    root = tmp_path_factory.mktemp("ladder")
    images = make_rooms(root, SEEDS)
    stores = [label(images, root / f"level{k}", fusion=HARD_BORDERS, **level) for k, level in enumerate(LEVELS)]
    return root, stores


def _figure(store, name: str) -> np.ndarray:
    return np.array([r[name] for r in store.rows()], dtype=np.float64)


@pytest.mark.parametrize(
    ("task", "disagreement"),
    [("depth", "depth_disagreement"), ("normals", "normals_disagreement_deg"), ("semantic", "semantic_disagreement")],
)
def test_larger_errors_give_worse_disagreement_and_seams(ladder, task, disagreement):
    _, stores = ladder
    seams = [_figure(s, f"{task}_seam_error") for s in stores]
    spread = [_figure(s, disagreement) for s in stores]
    # Disagreement grows with the error in every room.
    assert np.all(spread[1] > 2.0 * spread[0]) and np.all(spread[2] > 1.3 * spread[1]), spread
    # Seams: the rooms' mean grows level by level, and the largest error is worse in every room.
    means = [s.mean() for s in seams]
    assert means[0] < means[1] < means[2], seams
    assert means[2] > means[0] + 0.15, seams
    assert np.all(seams[2] > seams[0]), seams


def test_larger_errors_give_larger_ground_truth_errors(ladder):
    root, stores = ladder
    metrics = []
    for store in stores:
        rows = []
        for row in store.rows():
            gt = groundtruth.read_ground_truth(groundtruth.ground_truth_files(root / "gt", row["pano_id"]), 64)
            rows.append(quality.gt_figures(store.spec, store.read(row["index"]), gt))
        metrics.append({k: np.array([r[k] for r in rows]) for k in rows[0]})
    clean, _, worst = metrics
    # Perfect teachers reproduce the ground truth rendered at the label resolution.
    assert clean["depth_gt_absrel"].max() < 0.01 and clean["normals_gt_mean_deg"].max() < 3.0
    assert clean["semantic_gt_accuracy"].min() > 0.97
    for name in ("depth_gt_absrel", "depth_gt_rmse", "normals_gt_mean_deg", "normals_gt_median_deg"):
        assert np.all(metrics[1][name] > clean[name]) and np.all(worst[name] > metrics[1][name]), name
    for name in ("normals_gt_within_11_25", "semantic_gt_accuracy", "semantic_gt_miou"):
        assert np.all(worst[name] < clean[name]), name
    # ±30% patch scales blend to errors mostly within 25%: delta<1.25 only just moves.
    assert np.all(worst["depth_gt_delta1"] <= clean["depth_gt_delta1"])
    assert worst["depth_gt_delta1"].mean() < clean["depth_gt_delta1"].mean()
    assert np.all(worst["depth_gt_absrel"] > 5 * clean["depth_gt_absrel"])


def test_semantic_histogram_shares_the_labelled_pixels():
    semantic = torch.full((4, 8), 255, dtype=torch.uint8)  # none labelled
    assert quality.semantic_histogram(semantic, 150) == [0.0] * 150
    semantic.view(-1)[:20] = torch.tensor([0] * 10 + [3] * 5 + [149] * 4 + [7])
    hist = quality.semantic_histogram(semantic, 150)
    assert len(hist) == 150 and sum(hist) == pytest.approx(1.0)
    assert (hist[0], hist[3], hist[7], hist[149]) == (0.5, 0.25, 0.05, 0.2)
    assert sum(h > 0 for h in hist) == 4


def test_manifest_figures_equal_the_recomputed_ones(ladder):
    """Seam figures computed at labelling time on the stored dtypes equal a recomputation from
    the stored arrays; coverage and histogram too; confidence means to float16 rounding."""
    _, stores = ladder
    store = stores[2]
    seams = SeamGeometry.for_store(store.spec)
    for row in store.rows():
        again = quality.array_figures(store.spec, store.read(row["index"]), seams)
        for name, value in again.items():
            if name.endswith("_confidence_mean"):
                assert value == pytest.approx(row[name], abs=2e-3), name
            elif name == "semantic_histogram":
                np.testing.assert_allclose(value, row[name], atol=1e-9)
            else:
                assert value == pytest.approx(row[name], rel=1e-12, abs=1e-12), name


def test_alignment_removes_the_depth_seams(ladder):
    """The same ±30% per-patch scale errors, aligned (the default): the seams go back to the
    clean store's level."""
    root, stores = ladder
    aligned = label(
        root / "images",
        root / "aligned",
        fusion=replace(HARD_BORDERS, align_metric_depth=True),
        **LEVELS[2],
    )
    unaligned, clean = _figure(stores[2], "depth_seam_error"), _figure(stores[0], "depth_seam_error")
    fixed = _figure(aligned, "depth_seam_error")
    assert np.all(fixed < unaligned), (fixed, unaligned)
    assert np.abs(fixed - clean).max() < 0.05, (fixed, clean)
