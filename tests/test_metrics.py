"""The metrics module (evaluation/metrics.py, docs/evaluation.md): every figure on hand-made
cases whose answers are worked out here from the formulas, the three aggregations against each
other where they must agree, distributed reduction, validity, clamping and alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.metrics import (
    ANGLE_BIN_DEG,
    FIGURE_NAMES,
    Meter,
    MetricConfig,
    depth_pairs,
    histogram_median,
    masked_median,
    normal_angles,
)

NAN = math.nan
LN2, LN15 = math.log(2.0), math.log(1.5)
LG2, LG15 = math.log10(2.0), math.log10(1.5)


def _grid(values, fill=NAN) -> torch.Tensor:
    """A (1,2,4) ERP map holding `values` first, then `fill`."""
    flat = list(values) + [fill] * (8 - len(values))
    return torch.tensor(flat, dtype=torch.float64).view(1, 2, 4)


def _depth_figures(pred, target, config=None, mask=None, **update):
    meter = Meter(config or MetricConfig(tasks=("depth",)))
    target_batch = {"depth": target}
    if mask is not None:
        target_batch["depth_mask"] = mask
    row = meter.update({"depth": pred}, target_batch, ["p"], **update)[0]
    return row, meter


# ---------------------------------------------------------------------- depth by hand
def test_every_depth_figure_by_hand():
    # Scored: (d, d*) = (1, 1), (2, 4), (3, 2); then a NaN target and a masked-out pixel.
    pred = _grid([1.0, 2.0, 3.0, 5.0, 7.0])
    target = _grid([1.0, 4.0, 2.0, NAN, 7.5])
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    mask[0, 1, 0] = False  # the pixel (7, 7.5)
    row, meter = _depth_figures(pred, target, mask=mask)
    expected = {
        "depth_absrel": (0 + 2 / 4 + 1 / 2) / 3,
        "depth_sqrel": (0 + 4 / 4 + 1 / 2) / 3,
        "depth_rmse": math.sqrt((0 + 4 + 1) / 3),
        "depth_rmse_log": math.sqrt((LN2**2 + LN15**2) / 3),
        "depth_log10": (LG2 + LG15) / 3,
        "depth_rmse_log10": math.sqrt((LG2**2 + LG15**2) / 3),
        "depth_delta1": 1 / 3,  # ratios 1, 2, 1.5 against 1.25, 1.5625, 1.953125
        "depth_delta2": 2 / 3,
        "depth_delta3": 2 / 3,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12), name
    for aggregation in ("pooled", "per_panorama"):
        for name, value in expected.items():
            assert meter.figures()[aggregation][name] == pytest.approx(value, rel=1e-12), (aggregation, name)
    assert meter.counts() == {"depth": 1}


def test_depth_range_is_half_open_and_predictions_are_clamped():
    config = MetricConfig(tasks=("depth",), depth_min=1.0, depth_max=10.0)
    # Targets 1 (excluded: the range is open below), 12 and 0.5 (outside) and a NaN
    # prediction are not scored; 10 is (closed above). Predictions 15, 0.2 and -3 clamp to 10, 1, 1.
    pred = _grid([15.0, 0.2, -3.0, 4.0, 4.0, 4.0, NAN])
    target = _grid([10.0, 5.0, 2.0, 1.0, 12.0, 0.5, 3.0])
    row, _ = _depth_figures(pred, target, config)
    assert row["depth_absrel"] == pytest.approx((0 + 4 / 5 + 1 / 2) / 3)
    # A zero prediction with depth_min 0 clamps to depth_floor.
    for floor, expected in ((1e-3, 0.999), (0.01, 0.99)):
        row, _ = _depth_figures(_grid([0.0]), _grid([1.0]), MetricConfig(tasks=("depth",), depth_floor=floor))
        assert row["depth_absrel"] == pytest.approx(expected)


def test_depth_alignments():
    gt = torch.arange(1.0, 9.0, dtype=torch.float64).view(1, 2, 4)
    pred = 2 * gt
    pred[0, 1, 3] = 100.0  # instead of 16
    figures = {a: _depth_figures(pred, gt, MetricConfig(tasks=("depth",), align=a))[0] for a in ("none", "median")}
    # none: seven relative errors of 1 and one of 92/8.
    assert figures["none"]["depth_absrel"] == pytest.approx((7 + 92 / 8) / 8)
    # median: medians (8+10)/2 = 9 and (4+5)/2 = 4.5, scale 0.5: exact but for 50 against 8.
    assert figures["median"]["depth_absrel"] == pytest.approx((42 / 8) / 8)
    # lsq: s = Σ d d* / Σ d² = (1 + 3) / (1 + 1) = 2 for d = (1, 1), d* = (1, 3): errors 1 and 1/3.
    config = MetricConfig(tasks=("depth",), align="lsq")
    row, _ = _depth_figures(_grid([1.0, 1.0]), _grid([1.0, 3.0]), config)
    assert row["depth_absrel"] == pytest.approx((1 + 1 / 3) / 2)
    row, _ = _depth_figures(2 * gt, gt, config)
    assert row["depth_absrel"] == pytest.approx(0.0, abs=1e-12)


def test_relative_predictions_are_fitted_in_disparity():
    gt = _grid([1.0, 2.0, 4.0, 5.0, 8.0, 3.0, 6.0])
    row, _ = _depth_figures(2.0 / gt + 0.3, gt, pred_depth_metric=False)
    assert row["depth_absrel"] == pytest.approx(0.0, abs=1e-9)
    assert row["depth_delta1"] == 1.0
    # A fit whose line is negative at one pixel. x = (0, 1, 2, 3), 1/d* = (1, 1, 0.01, 0.01):
    # mean x 1.5, mean y 0.505, Sxy = -0.495 * 4 = -1.98, Sxx = 5: a = -0.396, b = 1.099,
    # a x + b = (1.099, 0.703, 0.307, -0.089): the last pixel is not scored.
    d, d_true, scored = depth_pairs(
        _grid([0.0, 1.0, 2.0, 3.0]),
        _grid([1.0, 1.0, 100.0, 100.0]),
        torch.ones(1, 2, 4, dtype=torch.bool),
        MetricConfig(tasks=("depth",), depth_max=1000.0),
        pred_metric=False,
    )
    assert scored[0].flatten().tolist() == [True, True, True, False, False, False, False, False]
    np.testing.assert_allclose(d[0].flatten()[:3].numpy(), [1 / 1.099, 1 / 0.703, 1 / 0.307], rtol=1e-9)
    np.testing.assert_allclose(d_true[0].flatten()[:3].numpy(), [1.0, 1.0, 100.0])


def test_relative_targets_are_fitted_to_the_prediction():
    depth = torch.tensor([[1.0, 2.0, 4.0, 5.0], [8.0, 3.0, 6.0, 2.5]], dtype=torch.float64)
    pred = torch.stack([depth, depth])  # (2,2,4)
    target = torch.stack([depth * 1.25, 3.0 / depth + 0.2])  # metric (25% too far), relative
    metric = torch.tensor([True, False])
    meter = Meter(MetricConfig(tasks=("depth",)))
    rows = meter.update({"depth": pred}, {"depth": target, "depth_metric": metric}, ["metric", "relative"])
    assert rows[0]["depth_absrel"] == pytest.approx(0.2)  # |d - 1.25 d| / 1.25 d
    assert rows[1]["depth_absrel"] == pytest.approx(0.0, abs=1e-9)
    # Relative prediction against relative target: p = 2 t + 1 fits exactly, ranges 1/t.
    meter = Meter(MetricConfig(tasks=("depth",)))
    rows = meter.update(
        {"depth": 2 * target[1:] + 1}, {"depth": target[1:], "depth_metric": metric[1:]}, ["r"], pred_depth_metric=False
    )
    assert rows[0]["depth_absrel"] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------- semantic by hand
SEM_GT = [[0, 0, 0, 0, 1, 1, 255, 2], [0, 0, 0, 0, 0, 0, 0, 0]]
SEM_PRED = [[0, 0, 1, 1, 1, 1, 0, 2], [0, 0, 0, 0, 0, 0, 2, 2]]


def _semantic_meter(config: MetricConfig, gt=SEM_GT, pred=SEM_PRED) -> tuple[Meter, list]:
    meter = Meter(config)
    target = torch.tensor(gt).view(-1, 2, 4)
    rows = meter.update({"semantic": torch.tensor(pred).view(-1, 2, 4)}, {"semantic": target}, ["a", "b"][: len(gt)])
    return meter, rows


def test_semantic_figures_by_hand():
    meter, rows = _semantic_meter(MetricConfig(tasks=("semantic",), num_classes=3))
    # Panorama a (7 scored): class 0 TP 2 FN 2, class 1 TP 2 FP 2, class 2 TP 1.
    assert rows[0]["semantic_miou"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert rows[0]["semantic_mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert rows[0]["semantic_pixel_accuracy"] == pytest.approx(5 / 7)
    # Panorama b: class 0 TP 6 FN 2; class 2 is only predicted, so not counted.
    assert rows[1]["semantic_miou"] == pytest.approx(6 / 8)
    assert rows[1]["semantic_pixel_accuracy"] == pytest.approx(6 / 8)
    # Pooled: class 0 TP 8 FN 4; class 1 TP 2 FP 2; class 2 TP 1 FP 2.
    pooled = meter.figures()["pooled"]
    assert pooled["semantic_miou"] == pytest.approx((8 / 12 + 2 / 4 + 1 / 3) / 3)
    assert pooled["semantic_mean_accuracy"] == pytest.approx((8 / 12 + 1 + 1) / 3)
    assert pooled["semantic_pixel_accuracy"] == pytest.approx(11 / 15)
    np.testing.assert_allclose(meter.class_iou().numpy(), [8 / 12, 2 / 4, 1 / 3])
    per_panorama = meter.figures()["per_panorama"]
    assert per_panorama["semantic_miou"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert per_panorama["semantic_mean_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert per_panorama["semantic_pixel_accuracy"] == pytest.approx((5 / 7 + 3 / 4) / 2)
    np.testing.assert_allclose(meter.class_iou("per_panorama").numpy(), [(1 / 2 + 3 / 4) / 2, 1 / 2, 1.0])


def test_counted_classes():
    # Given: exactly those; a class neither in the truth nor predicted (3) is left out.
    meter, _ = _semantic_meter(MetricConfig(tasks=("semantic",), num_classes=4, counted_classes=(0, 1, 3)))
    assert meter.figures()["pooled"]["semantic_miou"] == pytest.approx((8 / 12 + 2 / 4) / 2)
    assert math.isnan(meter.class_iou()[3]) and math.isnan(meter.class_iou()[2])
    # A counted class that is only predicted scores 0 (panorama b: class 2).
    config = MetricConfig(tasks=("semantic",), num_classes=3, counted_classes=(0, 2))
    meter, rows = _semantic_meter(config, SEM_GT[1:], SEM_PRED[1:])
    assert rows[0]["semantic_miou"] == pytest.approx((6 / 8 + 0) / 2)
    assert rows[0]["semantic_mean_accuracy"] == pytest.approx(6 / 8)  # class 2 has no ground truth


def test_predicted_no_class_counts_as_a_miss_or_is_left_out():
    gt, pred = [[0, 0, 1, 1, 255, 255, 255, 255]], [[0, 255, 1, 1, 0, 0, 0, 0]]
    _, rows = _semantic_meter(MetricConfig(tasks=("semantic",), num_classes=2), gt, pred)
    assert rows[0]["semantic_miou"] == pytest.approx((1 / 2 + 1) / 2)
    assert rows[0]["semantic_pixel_accuracy"] == pytest.approx(3 / 4)
    config = MetricConfig(tasks=("semantic",), num_classes=2, missing_class_is_wrong=False)
    _, rows = _semantic_meter(config, gt, pred)
    assert rows[0]["semantic_miou"] == pytest.approx(1.0)
    assert rows[0]["semantic_pixel_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class ids"):
        _semantic_meter(MetricConfig(tasks=("semantic",), num_classes=2), gt, [[0, 2, 1, 1, 0, 0, 0, 0]])


# ---------------------------------------------------------------------- normals by hand
def _rotated(degrees: list[float]) -> torch.Tensor:
    """(1,3,2,4) normals at the given angles from (0, 0, 1) about x, then NaN."""
    n = torch.full((3, 8), NAN, dtype=torch.float64)
    for i, a in enumerate(degrees):
        n[:, i] = torch.tensor([0.0, math.sin(math.radians(a)), math.cos(math.radians(a))], dtype=torch.float64)
    return n.view(1, 3, 2, 4)


def test_every_normals_figure_by_hand():
    truth = _rotated([0.0] * 8)
    pred = 3.0 * _rotated([0.0, 20.0, 25.0, 180.0, 5.0])  # not unit: normalised first
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    mask[0, 1, 0] = False  # the 5° pixel; the NaN pixels are not scored either
    meter = Meter(MetricConfig(tasks=("normals",)))
    row = meter.update({"normals": pred}, {"normals": truth, "normals_mask": mask}, ["p"])[0]
    expected = {
        "normals_mean_deg": (0 + 20 + 25 + 180) / 4,
        "normals_median_deg": (20 + 25) / 2,
        "normals_rmse_deg": math.sqrt((0 + 400 + 625 + 32400) / 4),
        "normals_within_11_25": 1 / 4,
        "normals_within_22_5": 2 / 4,
        "normals_within_30": 3 / 4,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-12), name
    pooled = meter.figures()["pooled"]
    for name, value in expected.items():
        tolerance = ANGLE_BIN_DEG / 2 if name == "normals_median_deg" else 1e-9
        assert pooled[name] == pytest.approx(value, abs=tolerance), name


def test_normal_angle_is_exact_near_zero():
    eps = 1e-7  # radians: acos of the cosine would keep about two digits of it
    angle = normal_angles(torch.tensor([0.0, math.sin(eps), math.cos(eps)]), torch.tensor([0.0, 0.0, 1.0]), dim=0)
    assert float(angle) == pytest.approx(math.degrees(eps), rel=1e-8)


# ---------------------------------------------------------------------- medians
@pytest.mark.parametrize("count", [1, 2, 1000, 1001])
def test_histogram_median_error_bound(count):
    rng = np.random.default_rng(count)
    angles = np.concatenate([rng.uniform(0, 180, count - count // 4), rng.uniform(0, 3, count // 4)])
    weights = rng.integers(1, 4, angles.size)
    bins = np.minimum((angles / ANGLE_BIN_DEG).astype(np.int64), int(180 / ANGLE_BIN_DEG) - 1)
    hist = np.bincount(bins, minlength=int(180 / ANGLE_BIN_DEG))
    weighted = np.bincount(bins, weights=weights, minlength=hist.size)
    assert abs(float(histogram_median(torch.from_numpy(hist))) - np.median(angles)) <= ANGLE_BIN_DEG / 2 + 1e-12
    # Weights act as repeated values.
    repeated = np.repeat(angles, weights)
    assert abs(float(histogram_median(torch.from_numpy(weighted))) - np.median(repeated)) <= ANGLE_BIN_DEG / 2 + 1e-12
    assert math.isnan(float(histogram_median(torch.zeros(10))))


def test_masked_median_is_numpys():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.normal(size=(3, 7)))
    valid = torch.from_numpy(rng.random((3, 7)) < 0.6)
    valid[2] = False
    medians = masked_median(values, valid)
    for b in range(2):
        assert float(medians[b]) == pytest.approx(np.median(values[b][valid[b]].numpy()))
    assert math.isnan(float(medians[2]))


# ---------------------------------------------------------------------- aggregations
def _random_batch(seed: int, batch: int = 1, height: int = 8, uniform_rows: bool = False, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1 if uniform_rows else height, 2 * height)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.expand(*t.shape[:-2], height, 2 * height).clone() if uniform_rows else t

    depth = rows(torch.rand(shape, generator=g, dtype=torch.float64) * 5 + 0.5)
    pred_depth = depth * rows(torch.rand(shape, generator=g, dtype=torch.float64) * 0.6 + 0.7)
    sem = rows(torch.randint(0, classes, shape, generator=g))
    pred_sem = torch.where(
        rows(torch.rand(shape, generator=g)) < 0.7, sem, rows(torch.randint(0, classes, shape, generator=g))
    )
    normals = torch.randn(batch, 3, *shape[1:], generator=g, dtype=torch.float64)
    noisy = normals + 0.4 * torch.randn(normals.shape, generator=g, dtype=torch.float64)
    normals, noisy = rows(normals), rows(noisy)
    pred = {"depth": pred_depth, "semantic": pred_sem, "normals": noisy}
    target = {"depth": depth, "semantic": sem, "normals": normals}
    return pred, target


ALL = MetricConfig(tasks=("depth", "semantic", "normals"), num_classes=5)


def _assert_figures_equal(a: dict, b: dict, median_tolerance: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for name in a:
        tolerance = median_tolerance if name == "normals_median_deg" else 1e-9
        assert a[name] == pytest.approx(b[name], rel=1e-9, abs=tolerance), name


def test_one_panorama_pooled_equals_per_panorama():
    meter = Meter(ALL)
    meter.update(*_random_batch(1), ["p"])
    figures = meter.figures()
    assert set(figures["pooled"]) == {n for names in FIGURE_NAMES.values() for n in names}
    # Only the median differs: exact per panorama, from the histogram pooled.
    _assert_figures_equal(figures["pooled"], figures["per_panorama"], median_tolerance=ANGLE_BIN_DEG / 2)


def test_uniform_rows_sphere_equals_pooled():
    meter = Meter(ALL)
    meter.update(*_random_batch(2, batch=2, uniform_rows=True), ["a", "b"])
    figures = meter.figures()
    _assert_figures_equal(figures["sphere"], figures["pooled"])


def test_sphere_weights_rows_by_solid_angle():
    # H = 4: row bands between latitudes 90, 45, 0, -45, -90 degrees have areas proportional
    # to 1 - √2/2, √2/2, √2/2, 1 - √2/2. An error of 0.5 in the top row only:
    gt = torch.ones(1, 4, 8, dtype=torch.float64)
    pred = gt.clone()
    pred[0, 0] = 1.5
    _, meter = _depth_figures(pred, gt)
    figures = meter.figures()
    assert figures["pooled"]["depth_absrel"] == pytest.approx(0.5 / 4)
    assert figures["sphere"]["depth_absrel"] == pytest.approx(0.5 * (1 - math.sqrt(0.5)) / 2)


def test_pooled_and_per_panorama_absrel_over_two_panoramas():
    # Equal valid counts: pooled AbsRel equals the mean of the panoramas' AbsRel, and pooled
    # RMSE = sqrt(mean MSE) >= mean RMSE.
    gt = torch.ones(2, 2, 4, dtype=torch.float64)
    pred = torch.stack([torch.full((2, 4), 1.2), torch.full((2, 4), 1.6)]).double()
    meter = Meter(MetricConfig(tasks=("depth",)))
    meter.update({"depth": pred}, {"depth": gt}, ["a", "b"])
    figures = meter.figures()
    assert figures["pooled"]["depth_absrel"] == pytest.approx(0.4)
    assert figures["per_panorama"]["depth_absrel"] == pytest.approx(0.4)
    assert figures["pooled"]["depth_rmse"] == pytest.approx(math.sqrt((0.04 + 0.36) / 2))
    assert figures["per_panorama"]["depth_rmse"] == pytest.approx((0.2 + 0.6) / 2)
    # Unequal counts (8 and 2 pixels): pooled weighs pixels, per panorama weighs panoramas.
    mask = torch.ones(2, 2, 4, dtype=torch.bool)
    mask[1, :, 1:] = False
    meter = Meter(MetricConfig(tasks=("depth",)))
    meter.update({"depth": pred}, {"depth": gt, "depth_mask": mask}, ["a", "b"])
    figures = meter.figures()
    assert figures["pooled"]["depth_absrel"] == pytest.approx((8 * 0.2 + 2 * 0.6) / 10)
    assert figures["per_panorama"]["depth_absrel"] == pytest.approx(0.4)


def test_batches_accumulate_and_rows_are_per_panorama():
    pred, target = _random_batch(3, batch=3)
    together = Meter(ALL)
    rows = together.update(pred, target, ["a", "b", "c"])
    one_by_one = Meter(ALL)
    for i, pano in enumerate("abc"):
        single = Meter(ALL)
        pick = {k: v[i : i + 1] for k, v in pred.items()}, {k: v[i : i + 1] for k, v in target.items()}
        row = single.update(*pick, [pano])[0]
        one_by_one.update(*pick, [pano])
        assert row == pytest.approx(rows[i])
    for aggregation in ("pooled", "per_panorama", "sphere"):
        _assert_figures_equal(together.figures()[aggregation], one_by_one.figures()[aggregation])


def test_sync_sums_two_workers():
    pred, target = _random_batch(4, batch=4)
    half = [
        ({k: v[s] for k, v in pred.items()}, {k: v[s] for k, v in target.items()}) for s in (slice(0, 2), slice(2, 4))
    ]
    whole = Meter(ALL)
    whole.update(pred, target, list("abcd"))
    first, second = Meter(ALL), Meter(ALL)
    first.update(*half[0], ["a", "b"])
    second.update(*half[1], ["c", "d"])
    states: list[torch.Tensor] = []
    second.sync(lambda flat: states.append(flat.clone()))  # a worker's contribution, unchanged
    first.sync(lambda flat: flat.add_(states[0]))  # in-place SUM over the two workers
    for aggregation in ("pooled", "per_panorama", "sphere"):
        _assert_figures_equal(first.figures()[aggregation], whole.figures()[aggregation])
    np.testing.assert_allclose(first.class_iou().numpy(), whole.class_iou().numpy(), rtol=1e-12)
    assert first.counts() == {"depth": 4, "semantic": 4, "normals": 4}


# ---------------------------------------------------------------------- contract
def test_no_valid_pixel_gives_nan_and_bad_input_raises():
    meter = Meter(MetricConfig(tasks=("depth", "normals")))
    rows = meter.update({"depth": _grid([])}, {"depth": _grid([])}, ["empty"])
    assert math.isnan(rows[0]["depth_absrel"]) and "normals_mean_deg" not in rows[0]
    figures = meter.figures()
    assert all(math.isnan(v) for aggregation in figures.values() for v in aggregation.values())
    with pytest.raises(ValueError, match="ERP"):
        meter.update({"depth": torch.ones(1, 2, 3)}, {"depth": torch.ones(1, 2, 3)}, ["x"])
    with pytest.raises(ValueError, match="class ids"):
        Meter(ALL).update({"semantic": torch.zeros(1, 5, 2, 4)}, {"semantic": torch.zeros(1, 2, 4)}, ["logits"])
    with pytest.raises(ValueError, match="one size"):
        meter.update({"depth": torch.ones(2, 2, 4)}, {"depth": torch.ones(2, 2, 4)}, ["x"])
    for bad in (
        {"tasks": ("depth", "edges")},
        {"tasks": ("depth",), "align": "mean"},
        {"tasks": ("depth",), "depth_max": 0},
    ):
        with pytest.raises(ValueError):
            MetricConfig(**bad)
    with pytest.raises(ValueError, match="semantic"):
        meter.class_iou()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_figures():
    pred, target = _random_batch(5, batch=2, height=32)
    cpu, gpu = Meter(ALL), Meter(ALL, device="cuda")
    cpu.update(pred, target, ["a", "b"])
    rows = gpu.update({k: v.cuda() for k, v in pred.items()}, {k: v.cuda() for k, v in target.items()}, ["a", "b"])
    assert rows[0]["pano_id"] == "a"
    for aggregation in ("pooled", "per_panorama", "sphere"):
        _assert_figures_equal(gpu.figures()[aggregation], cpu.figures()[aggregation])
