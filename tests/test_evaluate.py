"""`mtpano evaluate` and `mtpano compare`: the figures are those of the metrics module fed by
hand, known errors give known figures, protocols map classes, and bad input exits 2 with one
line."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_stores import write_truth_store
from typer.testing import CliRunner

from evaluation.classes import NYU40_CLASSES
from evaluation.evaluate import ALIGN_DISPARITY, compare_stores, evaluate_model, resolve_model_dir
from evaluation.metrics import FIGURE_NAMES, TASKS, Meter, MetricConfig
from evaluation.protocols import get_protocol
from mtpano.cli import app
from spherical.ade20k import ADE20K_CLASSES
from storage.labelstore import LabelStore
from trainer.checkpoint import load_model
from trainer.config import TrainConfig, TrainOptions
from trainer.inference import predict
from trainer.train import fit, plan_run

SEEDS = [1, 2, 3]
ALL_FIGURES = [name for task in TASKS for name in FIGURE_NAMES[task]]
FAST = ["--data-workers", "0"]


def train_tiny(store: str, out: Path) -> Path:
    """A tiny BridgeNet trained for 3 steps on `store` (no validation: best/ = final/)."""
    config = TrainConfig.from_preset("tiny", height=32, batch_size=2, steps=3, val_fraction=0.0)
    fit(plan_run([store], [], out, config), TrainOptions(data_workers=0))
    return out


def cli(*args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mtpano ARGS` run in this process."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def edit_store(url: str, name: str, change) -> None:
    """Replace array `name` of every panorama i of the store by change(i, array)."""
    store = LabelStore.open(url, mode="r+")
    array = store.group[name].with_config({"write_empty_chunks": True})
    for row in store.rows():
        i = int(row["index"])
        array[i] = change(i, array[i])


def copy_store(url: str, path: Path, **kwargs) -> str:
    """A second store of the same rooms (same pano ids and arrays)."""
    return write_truth_store(path, SEEDS, **kwargs).url


def truth_batch(url: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """RGB (B,3,H,W) in [0,1], the Meter's target (masks where the store has labels) and the
    pano ids of every panorama of a store, read straight from its arrays."""
    store = LabelStore.open(url)
    rows = store.rows()
    arrays = [store.read(int(r["index"])) for r in rows]
    stack = {k: torch.from_numpy(np.stack([a[k] for a in arrays])) for k in arrays[0]}
    depth, normals = stack["depth"].float(), stack["normals"].float()
    semantic = stack["semantic"].long()
    target = {
        "depth": torch.nan_to_num(depth),
        "depth_mask": torch.isfinite(depth),
        "semantic": semantic,
        "semantic_mask": semantic != 255,
        "normals": torch.nan_to_num(normals),
        "normals_mask": torch.isfinite(normals).all(1),
    }
    return stack["rgb"].float() / 255.0, target, [r["pano_id"] for r in rows]


def assert_figures_equal(got: dict, expected: dict, names=ALL_FIGURES) -> None:
    for aggregation in ("pooled", "per_panorama", "sphere"):
        for name in names:
            assert got[aggregation][name] == pytest.approx(expected[aggregation][name], rel=1e-6, abs=1e-9), (
                aggregation,
                name,
            )


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> str:
    return write_truth_store(tmp_path_factory.mktemp("truth") / "gt", SEEDS).url


@pytest.fixture(scope="module")
def run(truth, tmp_path_factory) -> Path:
    return train_tiny(truth, tmp_path_factory.mktemp("runs") / "metric")


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory) -> Path:
    """A depth-only model trained on relative disparity (its depth_kind is relative_disparity)."""
    root = tmp_path_factory.mktemp("relative")
    store = write_truth_store(root / "store", SEEDS, tasks=("depth",), depth_kind="relative_disparity")
    return train_tiny(store.url, root / "run")


@pytest.fixture(scope="module")
def by_hand(run, truth) -> tuple[Meter, list[dict]]:
    """The metric model's figures on the truth store: predict, then a Meter fed by hand."""
    model, _ = load_model(run / "best")
    rgb, target, ids = truth_batch(truth)
    meter = Meter(MetricConfig(tasks=TASKS, num_classes=150))
    rows = meter.update(predict(model.eval(), rgb), target, ids)
    return meter, rows


# ---------------------------------------------------------------------- evaluate
def test_evaluate_json_and_csv_equal_predict_and_meter_by_hand(run, truth, by_hand, tmp_path):
    meter, rows = by_hand
    table = tmp_path / "out" / "per_pano.csv"
    code, out, err = cli("evaluate", run, truth, "--json", "--batch", "2", "--per-panorama", table, *FAST)
    assert code == 0, err
    result = json.loads(out)
    for key in ("model", "step", "store", "protocol", "align", "panoramas", "figures", "class_iou", "ignored_classes"):
        assert key in result, key
    assert result["model"] == str(run / "best") and result["step"] == 3 and result["store"] == truth
    assert (result["protocol"], result["align"], result["panoramas"]) == ("synth", "none", 3)
    assert result["ignored_classes"] == [] and result["class_mapping"] == "identity"
    assert result["coverage"] == {"depth": 1.0, "semantic": 1.0, "normals": 1.0}
    assert set(result["figures"]) == {"pooled", "per_panorama", "sphere"}
    assert all(sorted(f) == sorted(ALL_FIGURES) for f in result["figures"].values())
    assert_figures_equal(result["figures"], meter.figures())
    iou = meter.class_iou("pooled")
    expected_iou = {ADE20K_CLASSES[c]: iou[c].item() for c in range(150) if not math.isnan(iou[c])}
    assert result["class_iou"] == pytest.approx(expected_iou, abs=1e-9) and len(expected_iou) >= 5

    with table.open() as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["pano_id", *ALL_FIGURES]
    assert [r["pano_id"] for r in written] == [r["pano_id"] for r in rows]
    for got, expected in zip(written, rows, strict=True):
        for name in ALL_FIGURES:
            assert float(got[name]) == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name


def test_evaluate_prints_one_labelled_table_per_aggregation(run, truth, by_hand):
    meter, _ = by_hand
    code, out, err = cli("evaluate", run, truth, *FAST)
    assert code == 0, err
    assert "alignment: none" in out and "classes: compared directly" in out
    figures = meter.figures()
    for title in ("pooled: every valid pixel", "per_panorama: mean of each panorama", "sphere: pooled, pixels"):
        assert f"{title}" in out, title
    for aggregation in ("pooled", "per_panorama", "sphere"):
        assert f"{figures[aggregation]['depth_absrel']:.4f}" in out
    assert out.count("· align none") == 3
    assert "evaluating" in err  # the progress bar goes to stderr


def test_run_checkpoints_and_saved_models_are_found(run, truth, by_hand):
    assert resolve_model_dir(run) == run / "best"
    assert resolve_model_dir(run, "final") == run / "final"
    assert resolve_model_dir(run / "final") == run / "final"
    step = evaluate_model(run, truth, checkpoint="3", batch_size=3)
    assert step.model == str(run / "checkpoints" / "step_0000003") and step.step == 3
    assert_figures_equal(step.figures, by_hand[0].figures())  # best/ is the step-3 model


def test_relative_model_is_fitted_in_disparity(relative_run, truth):
    result = evaluate_model(relative_run, truth, batch_size=3)
    assert result.tasks == ("depth",) and result.align == ALIGN_DISPARITY
    model, _ = load_model(relative_run / "best")
    rgb, target, ids = truth_batch(truth)
    meter = Meter(MetricConfig(tasks=("depth",)))
    meter.update(predict(model.eval(), rgb), target, ids, pred_depth_metric=False)
    assert_figures_equal(result.figures, meter.figures(), FIGURE_NAMES["depth"])


# ---------------------------------------------------------------------- compare
def test_compare_a_store_with_itself_is_perfect(truth):
    code, out, err = cli("compare", truth, truth, "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)
    assert result["panoramas"] == 3 and result["only_in_prediction"] == result["only_in_ground_truth"] == 0
    for aggregation, figures in result["figures"].items():
        assert figures["depth_absrel"] == 0.0 and figures["depth_rmse"] == 0.0 and figures["depth_delta1"] == 1.0
        assert figures["semantic_miou"] == 1.0 and figures["semantic_pixel_accuracy"] == 1.0
        assert figures["normals_mean_deg"] == 0.0 and figures["normals_within_11_25"] == 1.0
        # per panorama the median is exact; over the set it is the centre of its 0.01° bin
        assert figures["normals_median_deg"] == (0.0 if aggregation == "per_panorama" else 0.005)


def test_compare_known_depth_error_and_holes(truth, tmp_path):
    """Depth × 1.1 everywhere: AbsRel 0.1, SqRel 0.01·mean(d), RMSE 0.1·sqrt(mean d²), δ1 1;
    alignment by median or least squares removes it. The top quarter of every semantic map
    unlabelled: those pixels are left out (coverage 3/4), the rest is perfect."""
    pred = copy_store(truth, tmp_path / "pred")
    edit_store(pred, "depth", lambda i, d: d * np.float16(1.1))
    quarter = 32 // 4
    edit_store(pred, "semantic", lambda i, s: np.concatenate([np.full_like(s[:quarter], 255), s[quarter:]]))
    depth = np.stack([LabelStore.open(truth).read(i, ["depth"])["depth"] for i in range(3)]).astype(np.float64)
    table = tmp_path / "rows.csv"
    code, out, err = cli("compare", pred, truth, "--json", "--per-panorama", table, *FAST)
    assert code == 0, err
    pooled = json.loads(out)["figures"]["pooled"]
    # float16 storage: each stored ratio is 1.1 within 1.1·2⁻¹¹
    assert pooled["depth_absrel"] == pytest.approx(0.1, abs=6e-4)
    assert pooled["depth_sqrel"] == pytest.approx(0.01 * depth.mean(), rel=1.2e-2)
    assert pooled["depth_rmse"] == pytest.approx(0.1 * math.sqrt((depth**2).mean()), rel=6e-3)
    assert pooled["depth_delta1"] == 1.0
    assert pooled["semantic_miou"] == 1.0 and pooled["semantic_pixel_accuracy"] == 1.0
    coverage = json.loads(out)["coverage"]
    assert coverage["semantic"] == pytest.approx(0.75, abs=1e-12) and coverage["depth"] == 1.0
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(float(r["depth_absrel"]) == pytest.approx(0.1, abs=6e-4) for r in rows)
    for align in ("median", "lsq"):
        aligned = compare_stores(pred, truth, align=align)
        assert aligned.align == align
        for figures in aligned.figures.values():
            assert figures["depth_absrel"] < 1e-3 and figures["depth_delta1"] == 1.0, (align, figures)


def test_compare_relative_store_is_fitted_in_disparity(truth, tmp_path):
    """A relative_disparity store holding 2/d + 0.3: the affine fit in disparity recovers d."""
    relative = write_truth_store(tmp_path / "rel", SEEDS, depth_kind="relative_disparity").url
    edit_store(relative, "depth", lambda i, inverse: (2.0 * inverse.astype(np.float32) + 0.3).astype(np.float16))
    result = compare_stores(relative, truth)
    assert result.align == ALIGN_DISPARITY
    for figures in result.figures.values():
        assert figures["depth_absrel"] < 2e-3 and figures["depth_delta1"] == 1.0
        assert figures["semantic_miou"] == 1.0


# ---------------------------------------------------------------------- protocols
@pytest.fixture(scope="module")
def nyu_truth(truth, tmp_path_factory) -> str:
    """The first two rooms' ground truth in NYU40 classes (ADE20K ids mapped by the protocol)."""
    url = write_truth_store(tmp_path_factory.mktemp("nyu") / "gt", SEEDS[:2], class_names=NYU40_CLASSES).url
    protocol = get_protocol("matterport3d")
    edit_store(url, "semantic", lambda i, s: protocol.map_classes(torch.from_numpy(s)).numpy().astype(np.uint8))
    return url


def test_model_with_ade_classes_is_scored_through_the_protocol_mapping(run, nyu_truth):
    """matterport3d's classes and mapping at the ground truth's height (the real protocol's
    512 rows are slow for a test): the predicted ADE20K ids are mapped to NYU40 before scoring."""
    protocol = dataclasses.replace(get_protocol("matterport3d"), erp_height=None)
    result = evaluate_model(run, nyu_truth, protocol=protocol)
    assert result.ignored_classes == tuple(protocol.ignored_classes()) and len(result.ignored_classes) == 39
    assert result.class_mapping == "ADE20K-150 -> NYU40 (ade20k_to_nyu40.csv)"
    assert result.class_names == NYU40_CLASSES and set(result.class_iou) <= set(NYU40_CLASSES)
    model, _ = load_model(run / "best")
    rgb, target, ids = truth_batch(nyu_truth)
    pred = predict(model.eval(), rgb)
    pred["semantic"] = protocol.map_classes(pred["semantic"])
    meter = Meter(protocol.metric_config(TASKS))
    meter.update(pred, target, ids)
    assert_figures_equal(result.figures, meter.figures())
    iou = meter.class_iou("pooled")
    assert result.class_iou == {NYU40_CLASSES[c]: iou[c].item() for c in range(40) if not math.isnan(iou[c])}


def test_ade_store_against_nyu40_truth_maps_through_the_protocol(truth, nyu_truth):
    """The NYU40 ground truth is the ADE20K truth mapped: scored through the protocol's mapping
    at its 512x1024 (both stores resized alike), the ADE20K store is perfect."""
    code, out, err = cli("compare", truth, nyu_truth, "--protocol", "structured3d", *FAST)
    assert code == 0, err
    assert "2 panoramas matched by pano_id (1 only in the scored store, 0 only in the ground truth)" in out
    assert "classes: mapped ADE20K-150 -> NYU40 (ade20k_to_nyu40.csv); 39 predicted classes" in out
    assert "scored at 512x1024 (HxW)" in out and "ground truth resized from 32x64 to 512x1024" in out
    result = compare_stores(truth, nyu_truth, protocol="structured3d")
    assert result.height == 512 and result.panoramas == 2
    for figures in result.figures.values():
        assert figures["semantic_miou"] == 1.0 and figures["depth_absrel"] == 0.0, figures


# ---------------------------------------------------------------------- bad input
def test_bad_input_exits_2_with_one_line(run, relative_run, truth, nyu_truth, tmp_path):
    not_a_store = tmp_path / "folder"
    not_a_store.mkdir()
    (not_a_store / "file.txt").write_text("x")
    no_tasks = write_truth_store(tmp_path / "no_tasks", SEEDS, tasks=()).url
    semantic_only = write_truth_store(tmp_path / "semantic", SEEDS, tasks=("semantic",)).url
    relative_truth = write_truth_store(tmp_path / "relative", SEEDS, depth_kind="relative_disparity").url
    elsewhere = write_truth_store(tmp_path / "elsewhere", [7]).url
    cases = {
        "model is not a model": (["evaluate", not_a_store, truth], "is not a model"),
        "model does not exist": (["evaluate", tmp_path / "nowhere", truth], "no such model folder"),
        "no such checkpoint": (["evaluate", run, truth, "--checkpoint", "7"], "has no checkpoint 7"),
        "bad checkpoint name": (["evaluate", run, truth, "--checkpoint", "last"], "best, final or a step"),
        "checkpoint of a saved model": (["evaluate", run / "best", truth, "--checkpoint", "3"], "not a run folder"),
        "store does not exist": (["evaluate", run, tmp_path / "nothing"], "not a label store"),
        "store is not a store": (["evaluate", run, not_a_store], "not a label store"),
        "store without the tasks": (["evaluate", run, no_tasks], "none of the tasks"),
        "no task with the model": (["evaluate", relative_run, semantic_only], "no task in common"),
        "unknown protocol": (["evaluate", run, truth, "--protocol", "kitti"], "unknown protocol 'kitti'"),
        "unknown alignment": (["evaluate", run, truth, "--align", "mean"], "unknown alignment"),
        "align for a relative model": (["evaluate", relative_run, truth, "--align", "median"], "always fitted"),
        "align on relative truth": (["compare", truth, relative_truth, "--align", "lsq"], "always fitted"),
        "classes without mapping": (["evaluate", run, nyu_truth], "--protocol matterport3d or structured3d"),
        "compare: nothing matches": (["compare", elsewhere, truth], "no panorama matches by pano_id"),
        "compare: not a store": (["compare", not_a_store, truth], "not a label store"),
        "compare: unknown protocol": (["compare", truth, truth, "--protocol", "nyu"], "unknown protocol"),
    }
    for name, (args, message) in cases.items():
        code, out, err = cli(*args, *FAST)
        assert code == 2, (name, out, err)
        assert message in err and err.strip().count("\n") == 0 and not out, (name, err)
