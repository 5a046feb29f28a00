"""The installed `mtpano` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from storage.groundtruth import read_depth, read_normals, read_semantic
from synthetic.dataset import seed_from_name
from synthetic.render import render_erp
from synthetic.scene import Scene


def _mtpano() -> list[str]:
    exe = Path(sys.executable).with_name("mtpano")
    return [str(exe)] if exe.exists() else [shutil.which("mtpano") or "mtpano"]


def test_help_lists_commands():
    out = subprocess.run([*_mtpano(), "--help"], capture_output=True, text=True, check=True)
    assert "synth" in out.stdout and "Usage" in out.stdout
    version = subprocess.run([*_mtpano(), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("mtpano ")


def test_synth_writes_panoramas_with_ground_truth(tmp_path):
    out = subprocess.run(
        [*_mtpano(), "synth", str(tmp_path), "--count", "2", "--height", "64", "--first-seed", "5"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote 2 rooms" in out.stderr
    image = cv2.imread(str(tmp_path / "images" / "room_00006.png"))
    assert image.shape == (64, 128, 3)
    scene = Scene.from_json((tmp_path / "scenes" / "room_00006.json").read_text())
    assert scene.seed == seed_from_name("room_00006") == 6
    render = render_erp(scene, 64)
    depth = read_depth(tmp_path / "gt" / "room_00006_depth.png")
    assert np.nanmax(np.abs(depth - render.range.numpy())) < 1e-3
    assert np.array_equal(read_semantic(tmp_path / "gt" / "room_00006_semantic.png"), render.semantic.numpy())
    normals = read_normals(tmp_path / "gt" / "room_00006_normals.png")
    assert float(np.nanmin((normals * render.normals.numpy()).sum(0))) > 0.999
    assert (tmp_path / "previews" / "room_00005.png").exists()


def test_synth_rejects_bad_options(tmp_path):
    out = subprocess.run([*_mtpano(), "synth", str(tmp_path), "--count", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "count" in out.stderr
