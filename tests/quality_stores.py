"""Small real label stores for the quality, inspect, report and verify tests: synthetic rooms
labelled in process by simulated teachers at a small size (64 px patches, 128 x 64 labels)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.config import LabelConfig, RunOptions
from pipeline.fusion import FusionConfig
from pipeline.run import run_labels
from storage.labelstore import LabelStore
from synthetic.dataset import write_dataset

PATCH_SIZE = 64
LABEL_HEIGHT = 64
SMALL = LabelConfig(
    depth_teacher="sim", semantic_teacher="sim", normal_teacher="sim", patch_size=PATCH_SIZE, erp_height=LABEL_HEIGHT
)
# Blending without soft borders and without depth alignment: per-patch teacher errors then
# show as steps at the patches' footprint edges, which the seam figures measure.
HARD_BORDERS = replace(FusionConfig(), border_ramp=0.05, align_metric_depth=False)


def make_rooms(root: Path, seeds: list[int]) -> Path:
    """Synthetic rooms rendered at the label height into root (images/, gt/, scenes/); returns images/."""
    write_dataset(root, seeds, height=LABEL_HEIGHT)
    return root / "images"


def label(images: Path, out: Path, config: LabelConfig = SMALL, **changes) -> LabelStore:
    """Label `images` into a new store at `out` in this process (no Ray)."""
    summary = run_labels(str(images), str(out), replace(config, **changes), RunOptions(in_process=True))
    assert summary.labelled == summary.total, summary
    return LabelStore.open(str(out))


def mtpano_command() -> list[str]:
    """The installed `mtpano` command (the one beside this Python, else the one on PATH)."""
    exe = Path(sys.executable).with_name("mtpano")
    return [str(exe)] if exe.exists() else [shutil.which("mtpano") or "mtpano"]


def mtpano(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `mtpano` command."""
    return subprocess.run([*mtpano_command(), *map(str, args)], capture_output=True, text=True, timeout=300)


def mtpano_here(*args: str) -> subprocess.CompletedProcess:
    """Run an `mtpano` command that starts no workers in this process, through the CLI's own
    code (typer's runner): what `mtpano` gives, without an interpreter start per call."""
    from typer.testing import CliRunner

    from mtpano.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)
