"""BridgeNet weights on disk: `model.safetensors` plus `config.json` (the full config and the step)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from model import BridgeNet, BridgeNetConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_model(model: BridgeNet, directory: Path | str, *, step: int = 0) -> Path:
    """Write the model's weights and config to `directory` (created if needed); returns it.

    config.json holds {"step": step, "config": BridgeNetConfig.to_dict()}: enough to rebuild
    the exact architecture. Only parameters and persistent buffers are saved; geometry grids
    and normalisation constants are rebuilt by the model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE, metadata={"step": str(step)})
    payload = {"step": step, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


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
