"""`mtpano predict`: a trained BridgeNet writes a store in the label format that every tool reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from quality_stores import mtpano
from train_stores import write_truth_store
from typer.testing import CliRunner

from mtpano.cli import app
from spherical.erp import erp_rays
from storage.labelstore import LabelStore
from synthetic.dataset import write_dataset
from trainer.config import TrainConfig, TrainOptions
from trainer.train import fit, plan_run

HEIGHT = 28


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three synthetic rooms (images and ground truth), their ground-truth store at HEIGHT, and
    a tiny model trained on it for a few steps."""
    root = tmp_path_factory.mktemp("predict")
    write_dataset(root / "rooms", [1, 2, 3], height=HEIGHT)
    truth = write_truth_store(root / "truth", [1, 2, 3], height=HEIGHT)
    config = TrainConfig.from_preset("tiny", height=HEIGHT, batch_size=2, steps=3, val_fraction=0.0)
    run = fit(plan_run([truth.url], [], root / "run", config), TrainOptions(data_workers=0))
    return root, truth.url, run.path


def test_predict_writes_a_verified_store_that_compare_and_train_read(world, tmp_path):
    root, _, run = world
    out = tmp_path / "pred"
    result = mtpano("predict", run, root / "rooms" / "images", "--out", out, "--in-process",
                    "--png", tmp_path / "png", "--ply", tmp_path / "ply", "--ply-stride", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = LabelStore.open(str(out))
    assert store.spec.kind == "predictions" and store.spec.erp_height == HEIGHT
    assert store.spec.source["step"] == 3 and store.spec.tasks == ("depth", "semantic", "normals")
    assert [r["status"] for r in store.rows()] == ["ok"] * 3
    assert mtpano("verify", out).returncode == 0
    # The images: depth, normals and semantic over the panorama, per panorama.
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:3] == [
        "room_00001_depth.png", "room_00001_normals.png", "room_00001_semantic.png"]  # fmt: skip
    # The point cloud opens with a standard reader, and its points are depth x ray.
    from plyfile import PlyData

    cloud = PlyData.read(str(tmp_path / "ply" / "room_00001.ply"))["vertex"]
    points = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)
    depth = store.read(0, ["depth"])["depth"].astype(np.float64)
    expected = (erp_rays(HEIGHT, dtype=torch.float64).numpy() * depth[..., None])[np.isfinite(depth)]
    assert points.shape == expected.shape and np.allclose(points, expected, atol=1e-5)
    assert {"red", "green", "blue"} <= set(cloud.data.dtype.names)
    # A predictions store trains like labels.
    trained = CliRunner().invoke(app, ["train", str(out), "--out", str(tmp_path / "again"), "--preset", "tiny",
                                       "--height", str(HEIGHT), "--batch", "2", "--steps", "1",
                                       "--val-fraction", "0", "--data-workers", "0"])  # fmt: skip
    assert trained.exit_code == 0, trained.output


def test_evaluate_equals_predict_then_compare(world, tmp_path):
    root, truth, run = world
    out = tmp_path / "pred"
    assert mtpano("predict", run, root / "rooms" / "images", "--out", out, "--in-process").returncode == 0
    runner = CliRunner()
    evaluated = runner.invoke(app, ["evaluate", str(run), truth, "--json", "--data-workers", "0"])
    compared = runner.invoke(app, ["compare", str(out), truth, "--json", "--data-workers", "0"])
    assert evaluated.exit_code == 0 and compared.exit_code == 0, (evaluated.output, compared.output)
    a = json.loads(evaluated.stdout)["figures"]
    b = json.loads(compared.stdout)["figures"]
    for aggregation in ("pooled", "per_panorama", "sphere"):
        for name, value in a[aggregation].items():
            # The store keeps float16 depth and normals: figures agree to their rounding.
            assert b[aggregation][name] == pytest.approx(value, rel=2e-3, abs=2e-3), (aggregation, name)


def test_resume_and_bad_input(world, tmp_path):
    root, _, run = world
    images = root / "rooms" / "images"
    (tmp_path / "data").mkdir()
    for source in images.iterdir():
        (tmp_path / "data" / source.name).write_bytes(source.read_bytes())
    (tmp_path / "data" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    first = mtpano("predict", run, tmp_path / "data", "--out", out, "--in-process")
    assert first.returncode == 3 and "broken" in first.stderr
    again = mtpano("predict", run, tmp_path / "data", "--out", out, "--in-process")
    assert again.returncode == 3 and "resuming: 3 panoramas already predicted, 1 to go" in again.stderr
    runner = CliRunner()
    for args, message in (
        ([str(tmp_path / "data"), str(images)], "is not a model"),
        ([str(run), str(tmp_path / "nowhere")], "nowhere"),
    ):
        result = runner.invoke(app, ["predict", *args, "--out", str(tmp_path / "never"), "--in-process"])
        assert result.exit_code == 2 and message in result.output and not (tmp_path / "never").exists()
    depth_free = write_truth_store(tmp_path / "sem", [1, 2], height=HEIGHT, tasks=("semantic",))
    config = TrainConfig.from_preset("tiny", height=HEIGHT, batch_size=2, steps=1, val_fraction=0.0)
    semantic_run = fit(plan_run([depth_free.url], [], tmp_path / "semrun", config), TrainOptions(data_workers=0))
    result = runner.invoke(
        app, ["predict", str(semantic_run.path), str(images), "--out", str(tmp_path / "never"), "--ply", "ply"]
    )
    assert result.exit_code == 2 and "--ply needs metric depth" in result.output
