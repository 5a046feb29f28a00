"""BridgeNet weights on disk: `model.safetensors` plus `config.json` (the full config and the step),
and training checkpoints, which add the state that resumes a run exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model import BridgeNet, BridgeNetConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_model(
    model: BridgeNet, directory: Path | str, *, step: int = 0, info: Mapping[str, Any] | None = None
) -> Path:
    """Write the model's weights and config to `directory` (created if needed); returns it.

    config.json holds {"step": step, "config": BridgeNetConfig.to_dict(), "info": info}: enough
    to rebuild the exact architecture, and what the weights mean (`info`: the trainer records
    the class names, the depth kind and the height it trained at; see `read_model_info`).
    Only parameters and persistent buffers are saved; geometry grids and normalisation
    constants are rebuilt by the model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE, metadata={"step": str(step)})
    payload = {"step": step, "config": model.config.to_dict(), "info": dict(info or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


def read_model_info(directory: Path | str) -> dict[str, Any]:
    """What a saved model's config.json says besides its architecture: {"step", and the `info`
    it was saved with: "class_names" (list of str), "depth_kind" ("metric_range" when it
    learned metric range, "relative_disparity" when only relative stores taught it depth),
    "height" (the ERP height it trained at), "tasks", "run" (its run folder)}; {} entries when
    saved without them."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a saved BridgeNet: {CONFIG_FILE} or {WEIGHTS_FILE} is missing")
    payload = json.loads((directory / CONFIG_FILE).read_text())
    return {"step": int(payload["step"]), **payload.get("info", {})}


def load_model(directory: Path | str) -> tuple[BridgeNet, int]:
    """Rebuild a saved BridgeNet on the CPU; returns (model, step).

    Loading is strict: a weight missing, unexpected or of another shape is an error. The
    encoder checkpoint named in the config is not read again: the saved weights include the
    encoder, so the model is built with a random encoder that the weights then overwrite, and
    the returned model's config has `encoder_checkpoint=None`.
    """
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved BridgeNet: {name} is missing")
    payload = json.loads((directory / CONFIG_FILE).read_text())
    config = BridgeNetConfig.from_dict(payload["config"])
    model = BridgeNet(dataclasses.replace(config, encoder_checkpoint=None))
    model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
    return model, int(payload["step"])


TRAINING_STATE_FILE = "training_state.pt"


def save_checkpoint(
    directory: Path | str,
    model: BridgeNet,
    step: int,
    state: dict[str, Any],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """A training checkpoint: the model (`save_model`'s format, so `load_model` opens it) plus
    `training_state.pt` (optimiser, schedule, gradient scaler, RNG states, data position, ...).

    Written to `<directory>.tmp` and renamed when complete, so a run killed while writing
    keeps its previous checkpoint and never finds a half-written one under the final name.
    """
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".tmp")
    if partial.exists():
        shutil.rmtree(partial)
    save_model(model, partial, step=step, info=info)
    torch.save({**state, "step": step}, partial / TRAINING_STATE_FILE)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return directory


def is_complete_checkpoint(directory: Path) -> bool:
    """A checkpoint folder under its final name with every file (see `save_checkpoint`)."""
    return not directory.name.endswith(".tmp") and all(
        (directory / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, TRAINING_STATE_FILE)
    )


def load_training_state(directory: Path | str) -> dict[str, Any]:
    """The `training_state.pt` of a checkpoint (trusted: written by this trainer)."""
    return torch.load(Path(directory) / TRAINING_STATE_FILE, map_location="cpu", weights_only=False)


def load_weights(model: BridgeNet, directory: Path | str) -> int:
    """Load a saved BridgeNet's weights into `model` (same architecture, strict); returns the step."""
    directory = Path(directory)
    payload = json.loads((directory / CONFIG_FILE).read_text())
    model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
    return int(payload["step"])
