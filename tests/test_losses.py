"""Training losses (trainer.losses): hand-made cases with known values, weighting, masks, batching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model import BridgeNet, BridgeNetConfig
from spherical.erp import erp_rays
from trainer.losses import (
    LossConfig,
    boundary_distance,
    compute_losses,
    edge_distance_target,
    image_gradient_target,
    label_boundaries,
)

# The tests read loss values with float(), which warns on tensors that require gradients.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")

# Plain weighted means unless a test turns a weighting on: H = 2 rows have equal solid
# angles anyway (both bands span 90 degrees of latitude), and confidences are 1.
PLAIN = LossConfig(solid_angle=False, confidence_power=0.0)


def _batch(B: int = 1, H: int = 2, **maps) -> dict:
    """A batch with every task unlabelled (zeros, False masks) except the maps given."""
    W = 2 * H
    batch = {
        "rgb": torch.zeros(B, 3, H, W, dtype=torch.float64),
        "depth": torch.zeros(B, H, W, dtype=torch.float64),
        "depth_mask": torch.zeros(B, H, W, dtype=torch.bool),
        "depth_confidence": torch.zeros(B, H, W, dtype=torch.float64),
        "semantic": torch.full((B, H, W), 255, dtype=torch.int64),
        "semantic_mask": torch.zeros(B, H, W, dtype=torch.bool),
        "semantic_confidence": torch.zeros(B, H, W, dtype=torch.float64),
        "normals": torch.zeros(B, 3, H, W, dtype=torch.float64),
        "normals_mask": torch.zeros(B, H, W, dtype=torch.bool),
        "normals_confidence": torch.zeros(B, H, W, dtype=torch.float64),
        "depth_metric": torch.ones(B, dtype=torch.bool),
    }
    batch.update(maps)
    for task in ("depth", "semantic", "normals"):
        if task in maps and f"{task}_mask" not in maps:
            batch[f"{task}_mask"] = torch.ones(B, H, 2 * H, dtype=torch.bool)
        if task in maps and f"{task}_confidence" not in maps:
            batch[f"{task}_confidence"] = torch.ones(B, H, 2 * H, dtype=torch.float64)
    return batch


def _output(**predictions) -> dict:
    """A BridgeNetOutput of leaf tensors that record their gradients; aux_* keys go to aux."""
    output: dict = {"aux": {}}
    for name, value in predictions.items():
        leaf = value.detach().clone().double().requires_grad_(True)
        if name.startswith("aux_"):
            output["aux"][name.removeprefix("aux_")] = leaf
        else:
            output[name] = leaf
    return output


def _depth_case(pred: list[float], label: list[float], mask: list[bool] | None = None, metric: bool = True):
    """A 2x4 ERP whose first row holds the values (the second row is unlabelled)."""
    depth = torch.ones(1, 2, 4, dtype=torch.float64)
    depth[0, 0] = torch.tensor(label, dtype=torch.float64)
    prediction = torch.ones(1, 1, 2, 4, dtype=torch.float64)
    prediction[0, 0, 0] = torch.tensor(pred, dtype=torch.float64)
    valid = torch.zeros(1, 2, 4, dtype=torch.bool)
    valid[0, 0] = torch.tensor(mask or [True] * 4)
    batch = _batch(depth=depth, depth_mask=valid, depth_metric=torch.tensor([metric]))
    return _output(depth=prediction), batch


# --- Depth.


def test_l1_depth_is_the_mean_absolute_error_over_labelled_pixels():
    output, batch = _depth_case([1.0, 2.5, 4.0, 9.0], [1.5, 2.0, 3.0, 1.0], mask=[True, True, True, False])
    losses = compute_losses(output, batch, dataclasses.replace(PLAIN, metric_depth_loss="l1"))
    assert float(losses["depth"]) == pytest.approx((0.5 + 0.5 + 1.0) / 3, abs=1e-12)
    assert float(losses["total"]) == pytest.approx((0.5 + 0.5 + 1.0) / 3, abs=1e-12)  # depth_weight 1


@pytest.mark.parametrize("root", [True, False])
def test_silog_hand_value(root):
    g = [0.1, -0.2, 0.3, 0.0]  # log pred - log label
    label = [2.0, 3.0, 1.5, 4.0]
    output, batch = _depth_case([lab * math.exp(x) for lab, x in zip(label, g, strict=True)], label)
    losses = compute_losses(output, batch, dataclasses.replace(PLAIN, silog_lambda=0.85, silog_root=root))
    mean = sum(g) / 4
    mean_square = sum(x * x for x in g) / 4
    variance = mean_square - 0.85 * mean**2  # Eigen et al. 2014, eq. 4
    assert float(losses["depth"]) == pytest.approx(math.sqrt(variance) if root else variance, abs=1e-12)


def test_silog_with_lambda_1_is_scale_invariant():
    generator = torch.Generator().manual_seed(0)
    label = 1 + 3 * torch.rand(2, 4, 8, generator=generator, dtype=torch.float64)
    pred = 1 + 3 * torch.rand(2, 1, 4, 8, generator=generator, dtype=torch.float64)
    confidence = torch.rand(2, 4, 8, generator=generator, dtype=torch.float64)
    batch = _batch(B=2, H=4, depth=label, depth_confidence=confidence)
    config = LossConfig(silog_lambda=1.0)  # solid angle and confidence weighting on
    reference = compute_losses(_output(depth=pred), batch, config)["depth"]
    scaled = compute_losses(_output(depth=pred * 3.7), batch, config)["depth"]
    assert float(scaled) == pytest.approx(float(reference), rel=1e-9)
    partial = LossConfig(silog_lambda=0.85)
    assert float(compute_losses(_output(depth=pred * 3.7), batch, partial)["depth"]) > 1.2 * float(
        compute_losses(_output(depth=pred), batch, partial)["depth"]
    )


def test_berhu_hand_value():
    errors = [0.1, 0.5, 1.0, 2.0]
    label = [2.0, 2.0, 2.0, 2.0]
    output, batch = _depth_case([lab + e for lab, e in zip(label, errors, strict=True)], label)
    losses = compute_losses(output, batch, dataclasses.replace(PLAIN, metric_depth_loss="berhu", berhu_threshold=0.2))
    c = 0.2 * max(errors)  # Laina et al. 2016: c = 0.2 max |x|
    expected = [e if e <= c else (e * e + c * c) / (2 * c) for e in errors]
    assert float(losses["depth"]) == pytest.approx(sum(expected) / 4, abs=1e-12)


def test_scale_and_shift_invariant_disparity_loss_hand_value():
    t = [1.0, 2.0, 3.0, 4.0]  # label disparity
    q = [1.0, 2.0, 3.0, 5.0]  # predicted disparity = 1 / predicted depth
    output, batch = _depth_case([1 / x for x in q], t, metric=False)
    losses = compute_losses(output, batch, PLAIN)
    # Least squares s q + b ~ t, then the mean absolute residual over the mean label.
    mq, mt = sum(q) / 4, sum(t) / 4
    s = sum((a - mq) * (b - mt) for a, b in zip(q, t, strict=True)) / sum((a - mq) ** 2 for a in q)
    b = mt - s * mq
    expected = sum(abs(s * a + b - c) for a, c in zip(q, t, strict=True)) / 4 / mt
    assert expected == pytest.approx(0.0742857142857, abs=1e-12)  # 0.185714... / 2.5
    assert float(losses["depth"]) == pytest.approx(expected, abs=1e-12)


def test_ssi_loss_ignores_scale_and_shift_of_the_predicted_disparity():
    generator = torch.Generator().manual_seed(1)
    label = 0.2 + torch.rand(2, 4, 8, generator=generator, dtype=torch.float64)
    disparity = 0.2 + torch.rand(2, 1, 4, 8, generator=generator, dtype=torch.float64)
    batch = _batch(B=2, H=4, depth=label, depth_metric=torch.tensor([False, False]))
    config = LossConfig()
    reference = compute_losses(_output(depth=1 / disparity), batch, config)["depth"]
    moved = compute_losses(_output(depth=1 / (4.0 * disparity + 0.3)), batch, config)["depth"]
    assert float(reference) > 0.05
    assert float(moved) == pytest.approx(float(reference), rel=1e-9)
    exact = compute_losses(_output(depth=1 / (2.0 * label[:, None] + 1.0)), batch, config)["depth"]
    assert float(exact) == pytest.approx(0.0, abs=1e-12)


def test_depth_loss_is_chosen_per_sample():
    """A metric and a relative sample in one batch: each gets its own loss, the batch their mean."""
    metric_out, metric_batch = _depth_case([1.0, 2.5, 4.0, 1.0], [1.5, 2.0, 3.0, 1.0], metric=True)
    relative_out, relative_batch = _depth_case([1.0, 0.5, 1 / 3, 0.25], [1.0, 2.0, 3.0, 4.0], metric=False)
    mixed_batch = {k: torch.cat((metric_batch[k], relative_batch[k])) for k in metric_batch}
    mixed_out = _output(depth=torch.cat((metric_out["depth"], relative_out["depth"])))
    config = dataclasses.replace(PLAIN, metric_depth_loss="l1")
    each = [
        float(compute_losses(o, b, config)["depth"])
        for o, b in ((metric_out, metric_batch), (relative_out, relative_batch))
    ]
    assert each[0] == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4, abs=1e-12)  # l1 over the 4 pixels
    assert each[1] == pytest.approx(0.0, abs=1e-12)  # disparity 1/pred = label exactly
    assert float(compute_losses(mixed_out, mixed_batch, config)["depth"]) == pytest.approx(sum(each) / 2, abs=1e-12)


# --- Semantic.


def test_cross_entropy_hand_value_ignores_255():
    logits = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
    logits[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    logits[0, :, 0, 1] = torch.tensor([0.0, 1.0, -1.0])
    classes = torch.full((1, 2, 4), 255)
    classes[0, 0, 0], classes[0, 0, 1] = 0, 2
    batch = _batch(semantic=classes, semantic_mask=classes != 255)
    losses = compute_losses(_output(semantic=logits), batch, PLAIN)
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(math.exp(-1) / (math.exp(0) + math.exp(1) + math.exp(-1)))
    assert float(losses["semantic"]) == pytest.approx((first + second) / 2, abs=1e-12)
    assert "semantic_dice" not in losses  # dice_weight 0: not computed


def test_dice_hand_value():
    # Two labelled pixels of class 0 and one of class 1; probabilities set by the logits.
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], dtype=torch.float64)  # pixel, class
    logits = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    logits[0, :, 0, :3] = probabilities.log().T
    classes = torch.full((1, 2, 4), 255)
    classes[0, 0, :3] = torch.tensor([0, 0, 1])
    batch = _batch(semantic=classes, semantic_mask=classes != 255)
    losses = compute_losses(_output(semantic=logits), batch, dataclasses.replace(PLAIN, dice_weight=0.5))
    dice_0 = 2 * (0.8 + 0.4) / ((0.8 + 0.4 + 0.3) + 2)
    dice_1 = 2 * 0.7 / ((0.2 + 0.6 + 0.7) + 1)
    assert float(losses["semantic_dice"]) == pytest.approx(1 - (dice_0 + dice_1) / 2, abs=1e-12)
    expected_total = float(losses["semantic"]) + 0.5 * float(losses["semantic_dice"])
    assert float(losses["total"]) == pytest.approx(expected_total, abs=1e-12)


# --- Normals.


def _normals_case(angles_deg: list[float]):
    """Labels (0,0,-1) on the first row; predictions tilted by the given angles about y."""
    label = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
    label[0, 2] = -1.0
    pred = label.clone()
    for u, angle in enumerate(angles_deg):
        a = math.radians(angle)
        pred[0, :, 0, u] = torch.tensor([math.sin(a), 0.0, -math.cos(a)], dtype=torch.float64)
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, 0] = True
    return _output(normals=pred), _batch(normals=label, normals_mask=mask)


def test_angular_and_l1_normals_hand_values():
    angles = [0.0, 30.0, 90.0, 180.0]
    output, batch = _normals_case(angles)
    angular = compute_losses(output, batch, PLAIN)["normals"]
    margin = 1e-6  # the cosine is clamped to [-1 + margin, 1 - margin]: 0 and 180 degrees move in
    expected = (math.acos(1 - margin) + math.radians(30) + math.radians(90) + math.acos(-1 + margin)) / 4
    assert float(angular) == pytest.approx(expected, abs=1e-12)
    l1 = compute_losses(output, batch, dataclasses.replace(PLAIN, normals_loss="l1"))["normals"]
    per_pixel = [abs(math.sin(math.radians(a))) + abs(1 - math.cos(math.radians(a))) for a in angles]
    assert float(l1) == pytest.approx(sum(per_pixel) / 4, abs=1e-12)


# --- Weightings.


def test_confidence_power():
    output, batch = _depth_case([1.0, 2.5, 4.0, 2.0], [1.5, 2.0, 3.0, 1.0])
    batch["depth_confidence"][0, 0] = torch.tensor([0.5, 1.0, 0.25, 0.0], dtype=torch.float64)
    errors, confidence = [0.5, 0.5, 1.0, 1.0], [0.5, 1.0, 0.25, 0.0]
    l1 = dataclasses.replace(PLAIN, metric_depth_loss="l1")
    off = compute_losses(output, batch, dataclasses.replace(l1, confidence_power=0.0))["depth"]
    assert float(off) == pytest.approx(sum(errors) / 4, abs=1e-12)  # gamma = 0: unweighted
    squared = compute_losses(output, batch, dataclasses.replace(l1, confidence_power=2.0))["depth"]
    w = [c**2 for c in confidence]
    assert float(squared) == pytest.approx(sum(a * b for a, b in zip(w, errors, strict=True)) / sum(w), abs=1e-12)


def test_solid_angle_weighting():
    """H = 4: rows span latitude bands [90,45], [45,0], [0,-45], [-45,-90] degrees."""
    H = 4
    label = torch.ones(1, H, 2 * H, dtype=torch.float64)
    pred = torch.ones(1, 1, H, 2 * H, dtype=torch.float64)
    row_error = torch.tensor([4.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    pred[0, 0] += row_error[:, None]
    batch = _batch(H=H, depth=label)
    config = dataclasses.replace(PLAIN, metric_depth_loss="l1", solid_angle=True)
    weighted = float(compute_losses(_output(depth=pred), batch, config)["depth"])
    edges = [math.radians(x) for x in (90, 45, 0, -45, -90)]
    area = [math.sin(edges[i]) - math.sin(edges[i + 1]) for i in range(H)]  # band areas, ~cos latitude
    expected = sum(a * e for a, e in zip(area, row_error.tolist(), strict=True)) / sum(area)
    assert weighted == pytest.approx(expected, abs=1e-12)
    plain = float(compute_losses(_output(depth=pred), batch, dataclasses.replace(config, solid_angle=False))["depth"])
    assert plain == pytest.approx(float(row_error.mean()), abs=1e-12)
    assert weighted < plain  # the large errors sit in the polar rows, which weigh less


# --- Auxiliary targets and terms.


def test_image_gradient_target():
    H, W = 4, 8
    u = torch.arange(W, dtype=torch.float64)
    column = torch.sin(2 * math.pi * (u + 0.5) / W)  # periodic in longitude
    rows = 0.1 * torch.arange(H, dtype=torch.float64)
    grey = column[None, :] + rows[:, None]  # (H,W)
    target = image_gradient_target(grey.expand(1, 3, H, W))[0, 0]  # luma of grey RGB = grey
    # Sobel / 8 in the interior rows: d/dx = (f(u+1) - f(u-1)) / 2 with columns wrapping, d/dy = 0.1.
    gx = (torch.roll(column, -1) - torch.roll(column, 1)) / 2
    expected = torch.sqrt(gx**2 + 0.1**2)
    torch.testing.assert_close(target[1:-1], expected.expand(H - 2, W), atol=1e-12, rtol=0)
    assert float(image_gradient_target(torch.full((1, 3, H, W), 0.3, dtype=torch.float64)).abs().max()) < 1e-15


def test_label_boundaries_and_boundary_distance():
    H, W = 4, 8
    depth = torch.full((1, H, W), 2.0, dtype=torch.float64)
    depth[0, :, 3:5] = 3.0  # a 50% jump on both sides of columns 3-4
    depth[0, :, 6] = 2.2  # a 10% step: below the 25% threshold
    valid = torch.ones(1, H, W, dtype=torch.bool)
    classes = torch.zeros(1, H, W, dtype=torch.int64)
    classes[0, 0] = 1  # class change between rows 0 and 1
    class_valid = torch.ones(1, H, W, dtype=torch.bool)
    class_valid[0, 0, 0] = False  # unlabelled: no class edge at (0,0)/(1,0)
    boundary = label_boundaries(depth, valid, classes, class_valid, depth_jump=0.25)[0]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[:, 2:6] = True  # pairs (2,3) and (4,5)
    expected[0:2, 1:] = True  # rows 0-1 differ in class (except column 0)
    assert torch.equal(boundary, expected)

    single = torch.zeros(1, 5, 10, dtype=torch.bool)
    single[0, 2, 0] = True
    distance = boundary_distance(single, clip=3)[0]
    v, u = torch.meshgrid(torch.arange(5.0), torch.arange(10.0), indexing="ij")
    du = torch.minimum(u, 10 - u)  # columns wrap: column 9 is next to column 0
    truth = torch.sqrt((v - 2) ** 2 + du**2).clamp(max=3) / 3
    torch.testing.assert_close(distance.double(), truth.double(), atol=1e-6, rtol=0)


def test_edge_distance_and_points_terms():
    H, W = 2, 4
    depth = torch.tensor([[[2.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]]], dtype=torch.float64)
    batch = _batch(depth=depth)
    target, weight = edge_distance_target(batch, PLAIN)
    assert torch.equal(weight, torch.ones(1, H, W, dtype=torch.float64))  # labelled everywhere, confidence 1
    # Every column touches a jump (1|2 and 3|0 across the seam): every pixel is on a boundary.
    assert torch.equal(target, torch.zeros(1, 1, H, W, dtype=torch.float64))
    prediction = torch.full((1, 1, H, W), 0.25, dtype=torch.float64)
    rays = erp_rays(H, dtype=torch.float64).permute(2, 0, 1)  # (3,H,W)
    points = torch.zeros(1, 3, H, W, dtype=torch.float64)
    losses = compute_losses(_output(aux_edge_distance=prediction, aux_points=points), batch, PLAIN)
    assert float(losses["edge_distance"]) == pytest.approx(0.25, abs=1e-12)
    # Points: predicted 0, target range x ray: the L1 over xyz is range x (|dx| + |dy| + |dz|).
    expected = (depth[0] * rays.abs().sum(0)).mean()
    assert float(losses["points"]) == pytest.approx(float(expected), abs=1e-12)
    relative = dict(batch, depth_metric=torch.tensor([False]))
    assert float(compute_losses(_output(aux_points=points), relative, PLAIN)["points"]) == 0.0


def test_coarse_heads_against_area_averaged_labels():
    """2x4 labels, a 1x2 coarse grid: cell 0 is columns 0-1, cell 1 columns 2-3."""
    depth = torch.tensor([[[1.0, 4.0, 2.0, 2.0], [2.0, 8.0, 2.0, 0.0]]], dtype=torch.float64)
    mask = depth > 0
    classes = torch.tensor([[[0, 0, 1, 1], [1, 0, 255, 1]]])
    normals = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
    normals[0, 2] = -1.0
    normals[0, :, 0, 0] = torch.tensor([0.0, -1.0, 0.0])  # one floor pixel in cell 0
    batch = _batch(depth=depth, depth_mask=mask, semantic=classes, semantic_mask=classes != 255, normals=normals)
    coarse_depth = torch.tensor([[[[3.0, 1.0]]]], dtype=torch.float64)
    coarse_logits = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    coarse_normals = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    coarse_normals[0, 2] = -1.0
    output = _output(
        aux_coarse_depth=coarse_depth, aux_coarse_semantic=coarse_logits, aux_coarse_normals=coarse_normals
    )
    config = dataclasses.replace(PLAIN, metric_depth_loss="l1")
    losses = compute_losses(output, batch, config)
    # Depth: geometric means (1*4*2*8)^(1/4) = 2.828..., (2*2*2)^(1/3) = 2; cell weights 4 and 3.
    cells = [(1 * 4 * 2 * 8) ** 0.25, 2.0]
    expected_depth = (4 * abs(3.0 - cells[0]) + 3 * abs(1.0 - cells[1])) / 7
    assert float(losses["coarse_depth"]) == pytest.approx(expected_depth, abs=1e-12)
    # Semantic: distributions (3/4, 1/4) and (0, 1) over 4 and 3 pixels; uniform logits: log 2 each.
    assert float(losses["coarse_semantic"]) == pytest.approx(math.log(2), abs=1e-12)
    # Normals: cell 0 averages three (0,0,-1) and one (0,-1,0): direction (0,-1,-3)/sqrt(10), length
    # sqrt(10)/4; cell 1 is flat. Angular error of (0,0,-1): atan(1/3) in cell 0, 0 in cell 1 (which
    # the clamped cosine 1 - 1e-6 turns into acos(1 - 1e-6)).
    length = math.sqrt(10) / 4
    expected_normals = (length * 4 * math.atan(1 / 3) + 4 * math.acos(1 - 1e-6)) / (length * 4 + 1.0 * 4)
    assert float(losses["coarse_normals"]) == pytest.approx(expected_normals, abs=1e-12)
    expected_total = 0.3 * (
        float(losses["coarse_depth"]) + float(losses["coarse_semantic"]) + float(losses["coarse_normals"])
    )
    assert float(losses["total"]) == pytest.approx(expected_total, abs=1e-12)


# --- Masks, NaN, batching, gradients, the real model.


def _tiny_model(**overrides) -> BridgeNet:
    torch.manual_seed(0)
    return BridgeNet(BridgeNetConfig.from_preset("tiny", num_classes=150, **overrides))


def _random_batch(B: int = 2, H: int = 28, seed: int = 0) -> dict:
    """Labels of every task with holes, random confidences; sample 0 metric, sample 1 relative."""
    g = torch.Generator().manual_seed(seed)
    W = 2 * H
    batch = {
        "rgb": torch.rand(B, 3, H, W, generator=g),
        "depth": 0.5 + 4 * torch.rand(B, H, W, generator=g),
        "depth_mask": torch.rand(B, H, W, generator=g) > 0.2,
        "depth_confidence": torch.rand(B, H, W, generator=g),
        "semantic": torch.randint(0, 150, (B, H, W), generator=g),
        "semantic_mask": torch.rand(B, H, W, generator=g) > 0.1,
        "semantic_confidence": torch.rand(B, H, W, generator=g),
        "normals": F.normalize(torch.randn(B, 3, H, W, generator=g), dim=1),
        "normals_mask": torch.rand(B, H, W, generator=g) > 0.3,
        "normals_confidence": torch.rand(B, H, W, generator=g),
        "depth_metric": torch.tensor([True, False] * (B // 2) + [True] * (B % 2)),
    }
    batch["semantic"] = torch.where(batch["semantic_mask"], batch["semantic"], 255)
    return batch


def test_invalid_and_nan_labels_contribute_nothing_and_give_finite_gradients():
    model = _tiny_model()
    batch = _random_batch()
    output = model(batch["rgb"])
    config = LossConfig(dice_weight=0.5)
    clean = compute_losses(output, batch, config)
    dirty = {k: v.clone() for k, v in batch.items()}
    # NaN and garbage where masks are False, NaN labels under True masks (count as unlabelled), NaN confidences.
    dirty["depth"][~batch["depth_mask"]] = torch.nan
    dirty["normals"][:, 0][~batch["normals_mask"]] = torch.nan
    dirty["semantic_confidence"][~batch["semantic_mask"]] = torch.nan
    dirty["depth"][0, 0, :5] = torch.nan
    dirty["depth_mask"][0, 0, :5] = True
    reference = {k: v.clone() for k, v in batch.items()}
    reference["depth_mask"][0, 0, :5] = False
    expected = compute_losses(output, reference, config)
    losses = compute_losses(output, dirty, config)
    for name, value in losses.items():
        assert torch.isfinite(value), name
        assert float(value) == pytest.approx(float(expected[name]), rel=1e-5, abs=1e-7), name
    assert float(clean["depth"]) != pytest.approx(float(losses["depth"]), rel=1e-7)  # the 5 pixels mattered
    losses["total"].backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert bool(torch.isfinite(parameter.grad).all()), name


def test_batch_loss_is_the_mean_of_the_single_sample_losses():
    """The normalisation that makes DDP over 2 workers x batch 1 equal 1 process x batch 2."""
    model = _tiny_model()
    batch = _random_batch(B=2)
    batch["semantic_mask"][1] = False  # sample 1 lacks semantics: contributes 0 to that term
    batch["semantic"][1] = 255
    output = model(batch["rgb"])
    config = LossConfig(dice_weight=0.5)
    together = compute_losses(output, batch, config)

    def sample(i: int) -> tuple[dict, dict]:
        single_output = {k: v[i : i + 1] for k, v in output.items() if k != "aux"}
        single_output["aux"] = {k: v[i : i + 1] for k, v in output["aux"].items()}
        return single_output, {k: v[i : i + 1] for k, v in batch.items()}

    apart = [compute_losses(*sample(i), config) for i in range(2)]
    assert set(together) == set(apart[0])
    for name in together:
        mean = (float(apart[0][name]) + float(apart[1][name])) / 2
        assert float(together[name]) == pytest.approx(mean, rel=1e-5, abs=1e-7), name
    assert float(apart[1]["semantic"]) == 0.0


def test_every_term_of_a_tiny_bridgenet_is_finite_and_reaches_its_output():
    model = _tiny_model()
    batch = _random_batch()
    output = model(batch["rgb"])
    losses = compute_losses(output, batch, LossConfig(dice_weight=0.5))
    expected = {"depth", "semantic", "semantic_dice", "normals", "gradient", "edge_distance", "points", "total"}
    expected |= {f"coarse_{t}" for t in ("depth", "semantic", "normals", "gradient", "edge_distance", "points")}
    assert set(losses) == expected
    for name, value in losses.items():
        assert value.ndim == 0 and value.dtype == torch.float32 and bool(torch.isfinite(value)), name
        assert float(value) > 0, name
    # bf16 outputs inside an autocast region (the trainer's CUDA setting): float32 terms, same values.
    half = {k: v.bfloat16() for k, v in output.items() if k != "aux"}
    half["aux"] = {k: v.bfloat16() for k, v in output["aux"].items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = compute_losses(half, batch, LossConfig(dice_weight=0.5))
    for name, value in low.items():
        assert value.dtype == torch.float32, name
        assert float(value) == pytest.approx(float(losses[name]), rel=2e-2), name
    # Each term's gradient reaches its own output (autograd.grad stops at the outputs: no pass
    # through the model).
    for name in sorted(expected - {"total"}):
        task = name.removesuffix("_dice")
        target = output[task] if task in output else output["aux"][task]
        (gradient,) = torch.autograd.grad(losses[name], target, retain_graph=True)
        assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().sum()) > 0, name


def test_a_depth_only_model_gets_depth_terms_only():
    model = _tiny_model(tasks=("depth",), dual_groups=False, gradient_truncation=False)
    batch = _random_batch()
    losses = compute_losses(model(batch["rgb"]), batch, LossConfig())
    assert set(losses) == {"depth", "gradient", "edge_distance", "coarse_depth", "coarse_gradient",
                           "coarse_edge_distance", "total"}  # fmt: skip
    assert all(bool(torch.isfinite(v)) for v in losses.values())


def test_bad_input_is_refused():
    batch = _random_batch()
    logits = torch.zeros(2, 10, 28, 56)
    with pytest.raises(ValueError, match="outside the model's 10 classes"):
        compute_losses({"semantic": logits, "aux": {}}, batch, LossConfig())
    with pytest.raises(KeyError, match="normals_confidence"):
        del batch["normals_confidence"]
        compute_losses({"normals": torch.zeros(2, 3, 28, 56), "aux": {}}, batch, LossConfig())
    with pytest.raises(ValueError, match="labels are"):
        compute_losses({"depth": torch.ones(2, 1, 14, 28), "aux": {}}, _random_batch(), LossConfig())
    with pytest.raises(ValueError, match="metric_depth_loss"):
        LossConfig(metric_depth_loss="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth_weight"):
        LossConfig(depth_weight=-1.0)
