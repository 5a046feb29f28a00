"""`mtpano experiment` on a micro config: two arms, one seed, a handful of steps."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from browser import Dom, browse
from quality_stores import mtpano, mtpano_command

from mtpano.experiment import ABLATIONS, ExperimentConfig, ExperimentError, read_experiment_config

MICRO = {
    "name": "micro",
    "train_rooms": 2,
    "test_rooms": 1,
    "render_height": 48,
    "label_height": 28,
    "patch_size": 48,
    "profiles": {"mild": {"depth": "sim:scale_error=0.2", "semantic": "sim:confusion=0.3", "normals": "sim"}},
    "arms": ["gt", "labels"],
    "seeds": [0],
    "train": {"preset": "tiny", "height": 28, "batch_size": 2, "steps": 4, "warmup_steps": 1, "log_every": 1,
              "checkpoint_every": 2},
    "previews": 1,
}  # fmt: skip
FIGURES = ("depth_absrel", "depth_delta1", "normals_mean_deg", "normals_within_11_25", "semantic_miou")


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**MICRO, **changes}))
    return path


def test_micro_experiment_runs_resumes_and_reports(tmp_path):
    config = write_config(tmp_path / "micro.yaml", train={**MICRO["train"], "steps": 12})
    out = tmp_path / "exp"
    # Killed while training the first arm, then run again: it continues where it stopped.
    process = subprocess.Popen([*mtpano_command(), "experiment", str(config), "--out", str(out)],
                               stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = out / "runs" / "gt" / "seed_0" / "checkpoints" / "step_0000002" / "training_state.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (out / "results.json").exists()
    first = mtpano("experiment", config, "--out", out)
    assert first.returncode == 0, first.stderr
    starts = [json.loads(line) for line in (out / "runs" / "gt" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in starts if r["kind"] == "start"][-1] >= 2  # continued, not restarted
    results = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"], r["ablation"]) for r in results["runs"]] == [("gt", 0, None), ("labels", 0, None)]
    for run in results["runs"]:
        assert (out / run["run"] / "final" / "model.safetensors").is_file()
        assert all(0 <= run["metrics"][f] < 1e3 for f in FIGURES), run["metrics"]
    table = (out / "results.md").read_text()
    assert "## Arms" in table and "## Ratio to gt" in table and "| labels-mild |" in table
    assert table.count("| gt |") == 1 and "semantic mIoU" in table
    browsed = browse(out / "index.html", tmp_path, "--dump-dom")
    dom = Dom()
    dom.feed(browsed.stdout)
    assert dom.find("body", **{"data-ready": "1"}), browsed.stderr[-2000:]
    images = dom.find("img")
    assert len(images) == 1 + 3 + 2 * 3  # RGB, 3 ground-truth panels, 3 panels per arm
    assert all((out / img["src"]).is_file() for img in images)
    assert dom.find("path", **{"data-series": "gt"}) and dom.find("path", **{"data-series": "labels-mild"})
    # A rerun redoes nothing: no run logs another line, no evaluation is rewritten.
    logs = {p: p.read_text() for p in out.rglob("metrics.jsonl")}
    scored = {p: p.stat().st_mtime_ns for p in out.rglob("evaluation.json")}
    again = mtpano("experiment", config, "--out", out)
    assert again.returncode == 0, again.stderr
    assert all(p.read_text() == text for p, text in logs.items())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("evaluation.json")} == scored
    assert "rendering" not in again.stderr and "labelled" not in again.stderr


def test_configs_are_checked_before_anything_runs(tmp_path):
    shipped = [read_experiment_config(p) for p in sorted(Path("experiments").glob("*.yaml"))]
    assert {c.name for c in shipped} >= {"pseudo-labels vs ground truth (CPU)", "pseudo-labels vs ground truth (GPU)"}
    assert all(set(c.ablations) == set(ABLATIONS) and len(c.seeds) >= 2 for c in shipped)
    with pytest.raises(ExperimentError, match="unknown arm"):
        ExperimentConfig(**{**MICRO, "arms": ["gt", "teachers"]})
    with pytest.raises(ExperimentError, match="unknown field"):
        ExperimentConfig(**{**MICRO, "train": {"preset": "tiny", "learning_rate": 1}})
    bad = write_config(tmp_path / "bad.yaml", seeds=[0, 0])
    result = mtpano("experiment", bad, "--out", tmp_path / "never")
    assert result.returncode == 2 and "seeds must be distinct" in result.stderr and not (tmp_path / "never").exists()
