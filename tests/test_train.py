"""`mtpano train`: the loop learns, resumes exactly, runs on Ray Train like in one process, and
refuses bad input with one line."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from quality_stores import label, make_rooms, mtpano, mtpano_command
from safetensors.torch import load_file
from train_stores import write_truth_store
from typer.testing import CliRunner

from model import BridgeNet
from mtpano.cli import app
from trainer.checkpoint import load_model
from trainer.config import TrainConfig, TrainOptions
from trainer.data import PanoramaDataset
from trainer.train import Distributed, fit, plan_run, validate

NO_AUGMENT = {"yaw": False, "mirror": False, "color_jitter": False}
IN_PROCESS = TrainOptions(data_workers=0)


def tiny(**changes) -> TrainConfig:
    """The tiny preset at 32x64, quick to train."""
    base = {"height": 32, "batch_size": 2, "steps": 6, "warmup_steps": 2, "val_every": 0, "log_every": 1}
    return TrainConfig.from_preset("tiny", **{**base, **changes})


def weights(run: Path, folder: str = "final") -> dict[str, torch.Tensor]:
    return load_file(run / folder / "model.safetensors")


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> str:
    return str(write_truth_store(tmp_path_factory.mktemp("truth") / "store", [1, 2, 3, 4]).url)


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> str:
    """Two synthetic rooms labelled by `mtpano labels`' pipeline with simulated teachers (64x128)."""
    root = tmp_path_factory.mktemp("labels")
    return label(make_rooms(root, [1, 2]), root / "labels").url


def test_tiny_bridgenet_fits_two_rooms_labels(labels, tmp_path):
    config = TrainConfig.from_preset(
        "tiny", height=64, batch_size=2, steps=45, lr=2e-3, warmup_steps=5, val_every=0, augment=NO_AUGMENT
    )
    plan = plan_run([labels], [labels], tmp_path / "run", config)
    torch.manual_seed(config.seed)
    untrained = BridgeNet(plan.model_config)
    loader = torch.utils.data.DataLoader(PanoramaDataset(plan.stores, plan.val_samples, 64, plan.tasks), batch_size=2)
    before = validate(untrained, loader, plan, Distributed())["figures"]["pooled"]
    run = fit(plan, IN_PROCESS)
    after = [r for r in run.read_metrics() if r["kind"] == "val"][-1]["figures"]["pooled"]
    assert after["depth_absrel"] <= 0.5 * before["depth_absrel"], (before, after)
    assert after["semantic_pixel_accuracy"] > before["semantic_pixel_accuracy"] + 0.2, (before, after)
    assert after["normals_mean_deg"] < before["normals_mean_deg"]
    _, step = load_model(run.path / "best")
    assert step == 45 and run.best()["metric"] == "depth_absrel"


def test_killed_run_resumes_to_identical_weights(truth, tmp_path):
    args = ["train", truth, "--preset", "tiny", "--height", "32", "--batch", "2", "--steps", "12",
            "--checkpoint-every", "4", "--val-every", "0", "--data-workers", "0", "--seed", "3"]  # fmt: skip
    # The uninterrupted run in this process, the killed and the resumed one in their own.
    config = TrainConfig.from_preset("tiny", height=32, batch_size=2, steps=12, checkpoint_every=4, val_every=0, seed=3)
    fit(plan_run([truth], [], tmp_path / "whole", config), IN_PROCESS)
    killed = tmp_path / "killed"
    process = subprocess.Popen([*mtpano_command(), *args, "--out", str(killed)], stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "step_0000004" / "training_state.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (killed / "final").exists(), "the run must be killed between steps 4 and 12"
    resumed = mtpano(*args, "--out", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 4" in resumed.stderr
    a, b = weights(tmp_path / "whole"), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in _lines(killed / "metrics.jsonl")]
    # Lines logged after the checkpoint by the killed process were dropped, then logged again once.
    logged = [(r["kind"], r["step"]) for r in records if r["kind"] in ("start", "train")]
    assert logged == [("start", 0), ("start", 4), ("train", 10), ("train", 12)]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_two_ray_workers_match_one_process(truth, tmp_path):
    config = tiny(steps=3, val_fraction=0.0, lr=1e-4, augment=NO_AUGMENT)
    one = fit(plan_run([truth], [], tmp_path / "one", config), IN_PROCESS)
    two = fit(plan_run([truth], [], tmp_path / "two", config), TrainOptions(workers=2, data_workers=0, threads=1))
    a, b = weights(one.path), weights(two.path)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # Each worker read its own panoramas: both started from the same weights, and only the
    # average of two different panoramas' gradients reproduces the batch of two.
    start = weights_at_init(one)
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 100 * worst
    assert [r["workers"] for r in two.read_metrics() if r["kind"] == "start"] == [2]


def weights_at_init(run) -> dict[str, torch.Tensor]:
    plan_config = json.loads((run.path / "train_config.json").read_text())
    torch.manual_seed(plan_config["train"]["seed"])
    from model import BridgeNetConfig

    return BridgeNet(BridgeNetConfig.from_dict(plan_config["model"])).state_dict()


def test_depth_only_ground_truth_trains_out_of_the_box(tmp_path):
    store = write_truth_store(tmp_path / "depth", [1, 2, 3], tasks=("depth",))
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", store.url, "--out", str(tmp_path / "run"), "--preset", "tiny", "--height", "28", "--batch", "2",
         "--steps", "3", "--data-workers", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dual_groups=False" in result.output and "gradient_truncation=False" in result.output
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["model"]["tasks"] == ["depth"] and not record["model"]["dual_groups"]
    model, _ = load_model(tmp_path / "run" / "final")
    assert set(model(torch.rand(1, 3, 28, 56))) == {"depth", "aux"}


def test_metric_and_relative_stores_train_together(tmp_path):
    metric = write_truth_store(tmp_path / "metric", [1, 2], tasks=("depth", "normals"))
    relative = write_truth_store(tmp_path / "relative", [3, 4], tasks=("depth",), depth_kind="relative_disparity")
    run = fit(
        plan_run([metric.url, relative.url], [], tmp_path / "run", tiny(batch_size=4, steps=2, val_fraction=0.0)),
        IN_PROCESS,
    )
    losses = [r["loss"] for r in run.read_metrics() if r["kind"] == "train"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(list(loss.values()))).all() for loss in losses)


def test_cli_trains_on_a_labelled_store_and_reports(labels, tmp_path):
    out = tmp_path / "run"
    result = mtpano("train", labels, "--val", labels, "--out", out, "--preset", "tiny", "--steps", "4", "--batch", "2",
                    "--val-every", "2", "--checkpoint-every", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "starting at step 0 of 4" in result.stderr and "validation at step 2" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"run {out}: best {out / 'best'} (step ")
    record = json.loads((out / "train_config.json").read_text())
    assert record["stores"][0]["url"] == labels and record["stores"][0]["role"] == "train"
    assert record["train"]["preset"] == "tiny" and record["model"]["num_classes"] == 150
    for folder in ("best", "final", "checkpoints/step_0000004"):
        model, step = load_model(out / folder)
        assert isinstance(model, BridgeNet) and step in (2, 4)
    kinds = [r["kind"] for r in json.loads("[" + ",".join(_lines(out / "metrics.jsonl")) + "]")]
    assert kinds[0] == "start" and kinds.count("val") == 2 and kinds[-1] == "end"
    assert list((out / "tensorboard").iterdir())
    again = mtpano("train", labels, "--val", labels, "--out", out, "--preset", "tiny", "--steps", "4", "--batch", "2",
                   "--val-every", "2", "--checkpoint-every", "2")  # fmt: skip
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_unreadable_panoramas_are_skipped_named_and_bounded(tmp_path):
    store = write_truth_store(tmp_path / "store", [1, 2, 3, 4])
    for shard in (tmp_path / "store" / "rgb" / "c" / "2").rglob("*"):
        if shard.is_file():
            shard.write_bytes(b"damaged")
    tolerant = fit(plan_run([store.url], [], tmp_path / "tolerant", tiny(steps=4, val_fraction=0.0)), IN_PROCESS)
    skipped = [r for r in tolerant.read_metrics() if r["kind"] == "skipped"]
    assert skipped and {p for r in skipped for p in r["pano_ids"]} == {"room_00003"}
    assert skipped[-1]["unreadable"] == 2 and skipped[-1]["read"] == 8  # 2 epochs of 4
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", store.url, "--out", str(tmp_path / "strict"), "--preset", "tiny", "--height", "28",
         "--batch", "2", "--steps", "12", "--val-fraction", "0", "--data-workers", "0"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "6 of 24 panoramas read so far could not be read" in result.output


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output


def test_bad_input_exits_2_with_one_line_and_writes_nothing(truth, tmp_path):
    out = tmp_path / "run"
    cases = {
        "missing store": ([str(tmp_path / "nowhere")], "not a label store"),
        "not a store": ([str(tmp_path)], "not a label store"),
        "no ok panorama": ([write_truth_store(tmp_path / "pending", [1], ok=False).url], "no panorama with status ok"),
        "class lists differ": (
            [truth, write_truth_store(tmp_path / "two", [1], class_names=("wall", "floor") * 10).url],
            "different class lists",
        ),
        "batch too large": ([truth, "--batch", "8"], "larger than the training set"),
        "unknown preset": ([truth, "--preset", "huge"], "unknown preset"),
    }
    for name, (args, message) in cases.items():
        preset = [] if "--preset" in args else ["--preset", "tiny"]
        code, output = run_cli(*args, *preset, "--out", out)
        assert code == 2, (name, output)
        assert message in output and output.strip().count("\n") == 0, (name, output)
        assert not out.exists(), name


def test_encoder_checkpoint_must_match_the_preset(truth, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(
        Dinov2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=2, image_size=56)
    ).save_pretrained(tmp_path / "dino")
    code, output = run_cli(
        truth, "--out", tmp_path / "run", "--preset", "tiny", "--batch", "2", "--encoder-checkpoint", tmp_path / "dino"
    )
    assert code == 2 and "hidden_size" in output and not (tmp_path / "run").exists()
    # A matching checkpoint is loaded: the encoder starts from its weights.
    good = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56))
    good.save_pretrained(tmp_path / "good")
    plan = plan_run([truth], [], tmp_path / "run", tiny(encoder_checkpoint=str(tmp_path / "good")))
    model = BridgeNet(plan.model_config)
    assert torch.equal(
        model.encoder.backbone.embeddings.patch_embeddings.projection.weight,
        good.embeddings.patch_embeddings.projection.weight,
    )


def test_a_run_folder_refuses_another_configuration(truth, tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli(
            truth,
            "--out",
            out,
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--height",
            "28",
            "--steps",
            "2",
            "--data-workers",
            "0",
        )[0]
        == 0
    )
    before = (out / "final" / "model.safetensors").read_bytes()
    code, output = run_cli(
        truth, "--out", out, "--preset", "tiny", "--batch", "2", "--height", "28", "--steps", "3", "--lr", "0.01"
    )
    assert code == 2 and "another configuration (train.lr, train.steps differ)" in output
    assert (out / "final" / "model.safetensors").read_bytes() == before
    code, _ = run_cli(
        truth, "--out", out, "--preset", "tiny", "--batch", "2", "--height", "28", "--steps", "3",
        "--data-workers", "0", "--overwrite",
    )  # fmt: skip
    assert code == 0 and json.loads((out / "train_config.json").read_text())["train"]["steps"] == 3


def test_config_file_then_flags_override_the_preset(truth, tmp_path):
    from trainer.config import resolve_config

    (tmp_path / "run.yaml").write_text(
        "preset: tiny\nlr: 0.004\nsteps: 7\naugment:\n  yaw: false\nmodel:\n  erp_mixer: false\n"
    )
    config = resolve_config(None, tmp_path / "run.yaml", {"steps": 9, "height": None})
    assert (config.preset, config.lr, config.steps, config.height) == ("tiny", 0.004, 9, 64)
    assert not config.augment.yaw and config.augment.mirror and config.model == {"erp_mixer": False}
    (tmp_path / "bad.json").write_text('{"learning_rate": 1}')
    code, output = run_cli(truth, "--out", tmp_path / "run", "--config", tmp_path / "bad.json")
    assert code == 2 and "unknown field(s) ['learning_rate']" in output
