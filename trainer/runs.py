"""The run folder of a training run: what it holds, and how a rerun finds its place.

    RUN/train_config.json        the TrainConfig, the BridgeNetConfig (derived from the tasks,
                                 with the notes of what was derived), every store read (URL,
                                 role, panoramas, spec hash)
    RUN/metrics.jsonl            one JSON line per logged step, validation and event
    RUN/tensorboard/             the same scalars for TensorBoard
    RUN/checkpoints/step_<N>/    model + training state (`trainer.checkpoint.save_checkpoint`),
                                 the last `keep` of them
    RUN/best/                    the model with the best validation figure (+ best.json)
    RUN/final/                   the model at the last step

A rerun of the same command continues from the last complete checkpoint; a run folder made
with another configuration is refused unless the caller overwrites it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import BridgeNet
from storage.labelstore import jsonable
from trainer.checkpoint import is_complete_checkpoint, save_model

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
BEST, FINAL = "best", "final"
BEST_FILE = "best.json"
# The parts of train_config.json that decide the result; the rest (version, notes) may change.
IDENTITY_KEYS = ("train", "model", "stores")


class RunError(ValueError):
    """A run folder that cannot be used as asked (made with another configuration, not a run)."""


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries in which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


@dataclass
class RunFolder:
    """A training run's folder (module doc)."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    # ------------------------------------------------------------------ config
    @classmethod
    def prepare(cls, path: Path | str, record: dict[str, Any], overwrite: bool) -> RunFolder:
        """Create the run folder for `record` (train_config.json's content), or reopen it.

        An existing folder made with the same configuration is reused (the run resumes);
        one made with another configuration is refused unless `overwrite`; a non-empty
        folder that is not a run is never replaced.
        """
        run = cls(Path(path))
        config_file = run.path / CONFIG_FILE
        if config_file.is_file():
            old = json.loads(config_file.read_text())
            differences = [
                name for key in IDENTITY_KEYS for name in _differences(old.get(key), record.get(key), f"{key}.")
            ]
            if not differences:
                return run
            if not overwrite:
                shown = ", ".join(differences[:6]) + (", ..." if len(differences) > 6 else "")
                raise RunError(
                    f"{run.path} holds a run made with another configuration ({shown} differ); "
                    "pass --overwrite to replace it, or choose another --out"
                )
            shutil.rmtree(run.path)
        elif run.path.exists() and any(run.path.iterdir()):
            raise RunError(f"{run.path} exists and is not a training run (no {CONFIG_FILE}): refusing to use it")
        run.path.mkdir(parents=True, exist_ok=True)
        _write_json(config_file, record)
        return run

    def record(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG_FILE).read_text())

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written ones are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and is_complete_checkpoint(p)]
        return sorted(found, key=lambda p: p.name)

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def prune(self, keep: int) -> None:
        """Delete all but the last `keep` complete checkpoints, and leftovers of killed writes."""
        for stale in self.checkpoints.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        for old in self.complete_checkpoints()[:-keep]:
            shutil.rmtree(old)

    def save_best(self, model: BridgeNet, step: int, metric: str, value: float, info: dict[str, Any]) -> None:
        """Replace best/ with `model` (written aside, then moved) and record why it is best."""
        partial = self.path / f"{BEST}.tmp"
        if partial.exists():
            shutil.rmtree(partial)
        save_model(model, partial, step=step, info=info)
        _write_json(partial / BEST_FILE, {"step": step, "metric": metric, "value": value})
        if (self.path / BEST).exists():
            shutil.rmtree(self.path / BEST)
        os.replace(partial, self.path / BEST)

    def best(self) -> dict[str, Any] | None:
        """best.json ({"step", "metric", "value"}), or None before the first validation."""
        path = self.path / BEST / BEST_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def save_final(self, model: BridgeNet, step: int, info: dict[str, Any]) -> None:
        partial = self.path / f"{FINAL}.tmp"
        if partial.exists():
            shutil.rmtree(partial)
        save_model(model, partial, step=step, info=info)
        if (self.path / FINAL).exists():
            shutil.rmtree(self.path / FINAL)
        os.replace(partial, self.path / FINAL)

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(jsonable(record)) + "\n")
            f.flush()

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines logged after `step`: a resumed run logs those steps again."""
        if not self.metrics_file.is_file():
            return
        kept = [line for line in self.metrics_file.read_text().splitlines() if _line_step(line) <= step]
        self.metrics_file.write_text("".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:  # a line cut off by a kill
        return 1 << 62


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    os.replace(partial, path)
