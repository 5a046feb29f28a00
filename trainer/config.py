"""Training configuration: one typed dataclass for what decides a run's result, named presets
per model size, overrides from a JSON/YAML file and from flags.

`TrainConfig` decides the result (two runs with equal configs, stores and seed end with the
same weights on a CPU); `TrainOptions` only decides how the run executes (workers, data
loader processes, device). A run folder refuses to continue with another `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import PRESETS as MODEL_PRESETS
from trainer.augment import AugmentConfig
from trainer.losses import LossConfig

SCHEDULES = ("cosine", "poly")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Validation figures the best checkpoint can be chosen by, and whether lower is better.
BEST_METRICS: dict[str, bool] = {
    "depth_absrel": True,
    "depth_rmse": True,
    "depth_delta1": False,
    "semantic_miou": False,
    "semantic_pixel_accuracy": False,
    "normals_mean_deg": True,
    "normals_within_11_25": False,
}


class ConfigError(ValueError):
    """A training configuration that cannot run as given (unknown field, bad value)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result. Defaults are the `small` preset's."""

    # Model preset of `model.config.PRESETS` (tiny | small | base | large).
    preset: str = "small"
    # BridgeNetConfig fields overriding the preset (the ablation switches live here).
    model: dict[str, Any] = field(default_factory=dict)
    # Main tasks to train; None: every task the training stores carry.
    tasks: tuple[str, ...] | None = None
    # ERP height the network trains at (W = 2H); labels of another size are resized on load.
    height: int = 512
    # Global batch: panoramas per optimiser step, over all workers and accumulation steps.
    batch_size: int = 8
    # Optimiser steps.
    steps: int = 40_000
    # Peak learning rate of everything but the encoder.
    lr: float = 2e-4
    # The encoder's learning rate is lr times this.
    encoder_lr_scale: float = 0.1
    # AdamW weight decay (not applied to biases and normalisation weights).
    weight_decay: float = 0.01
    # AdamW betas.
    betas: tuple[float, float] = (0.9, 0.999)
    # Steps of linear warm-up from 0 to the peak learning rate.
    warmup_steps: int = 1000
    # Decay after the warm-up: "cosine" (to min_lr_ratio x peak) or "poly" (power poly_power).
    schedule: str = "cosine"
    # Final learning rate as a share of the peak.
    min_lr_ratio: float = 0.0
    # Power of the "poly" schedule.
    poly_power: float = 0.9
    # Clip the global gradient norm to this; 0 turns clipping off.
    grad_clip: float = 1.0
    # Micro-batches per optimiser step on each worker (the global batch is split over them).
    grad_accum: int = 1
    # "auto": bf16 autocast on CUDA, fp32 on CPU; "fp16" uses a gradient scaler.
    precision: str = "auto"
    # Seed of the initialisation, the data order and every augmentation.
    seed: int = 0
    # Share of the training stores' panoramas held out for validation when no --val store is given.
    val_fraction: float = 0.05
    # Validate every this many steps (and at the end); 0: only at the end.
    val_every: int = 2000
    # Panoramas validated at most per validation (0: all); a fixed subset, the same every time.
    val_limit: int = 0
    # Write a checkpoint every this many steps (and at the end).
    checkpoint_every: int = 2000
    # Last checkpoints kept (best/ and final/ are kept besides).
    keep: int = 3
    # Log losses every this many steps.
    log_every: int = 20
    # Validation figure (pooled) that picks best/; None: the first main task's (depth_absrel,
    # semantic_miou or normals_mean_deg).
    best_metric: str | None = None
    # A transformers DINOv2 `save_pretrained` folder the encoder starts from.
    encoder_checkpoint: str | None = None
    # A trained BridgeNet folder (trainer.checkpoint format) to fine-tune; its architecture is used.
    init: str | None = None
    # Keep the encoder's weights fixed.
    freeze_encoder: bool = False
    # The run fails when more than this share of the panoramas read so far could not be read.
    max_unreadable: float = 0.05
    # Data augmentations.
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Loss terms and their weights.
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        # JSON and YAML give lists and dicts; the config stays hashable-looking and comparable.
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", build_config(AugmentConfig, self.augment, "augment"))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", build_config(LossConfig, self.loss, "loss"))
        self._validate()

    def _validate(self) -> None:
        if self.preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        positive = ("height", "batch_size", "steps", "grad_accum", "log_every", "checkpoint_every", "keep")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "val_limit", "warmup_steps", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.encoder_lr_scale < 0:
            raise ConfigError(f"encoder_lr_scale must be >= 0, got {self.encoder_lr_scale}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if not 0 <= self.max_unreadable <= 1:
            raise ConfigError(f"max_unreadable must lie in [0, 1], got {self.max_unreadable}")
        if self.best_metric is not None and self.best_metric not in BEST_METRICS:
            raise ConfigError(f"best_metric must be one of {sorted(BEST_METRICS)}, got {self.best_metric!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")

    # ------------------------------------------------------------------ presets and files
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The training preset of model preset `name`, with fields overridden by keyword."""
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
        return build_config(cls, {**TRAIN_PRESETS[name], "preset": name, **overrides}, "train config")

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with fields overridden (nested `augment` / `loss` dicts update field by field)."""
        data = self.to_dict()
        for key in ("augment", "loss", "model"):
            if isinstance(overrides.get(key), dict):
                overrides[key] = {**data[key], **overrides[key]}
        return build_config(TrainConfig, {**data, **overrides}, "train config")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists, nested configs dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return build_config(cls, data, "train config")


def build_config(cls: type, data: dict[str, Any], what: str) -> Any:
    """`cls(**data)` for a config dataclass, with unknown fields and the dataclass's own
    refusals (TypeError, ValueError) reported as one ConfigError naming `what`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {unknown}; fields are {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what}: {err}") from None


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The fields of a JSON (.json) or YAML (.yaml, .yml) training config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as err:  # yaml.YAMLError and json.JSONDecodeError are ValueErrors
        raise ConfigError(f"{path}: cannot parse: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
    return data


def resolve_config(preset: str | None, file: Path | str | None, flags: dict[str, Any]) -> TrainConfig:
    """The run's config: the preset, then the file's fields, then the flags that were given.

    The preset comes from `preset`, else the file's `preset`, else "small".
    """
    from_file = read_config_file(file) if file is not None else {}
    name = preset or from_file.get("preset") or "small"
    given = {k: v for k, v in flags.items() if v is not None}
    return TrainConfig.from_preset(name).replace(**{**from_file, "preset": name, **given})


# Starting points per model size: the resolution, batch and schedule a run of that size needs
# (tiny: a CPU-sized toy; small/base/large: one to eight modern GPUs).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "height": 64,
        "batch_size": 4,
        "steps": 400,
        "lr": 1e-3,
        "encoder_lr_scale": 1.0,
        "warmup_steps": 20,
        "val_every": 100,
        "checkpoint_every": 100,
        "log_every": 10,
    },
    "small": {"height": 512, "batch_size": 8, "steps": 40_000, "lr": 2e-4, "warmup_steps": 1000},
    "base": {"height": 512, "batch_size": 8, "steps": 60_000, "lr": 1e-4, "warmup_steps": 1500},
    "large": {"height": 512, "batch_size": 8, "steps": 80_000, "lr": 5e-5, "warmup_steps": 2000},
}


@dataclass(frozen=True)
class TrainOptions:
    """How a run executes; none of it changes the result."""

    # Ray Train workers; None: one plain process without Ray.
    workers: int | None = None
    # Ray cluster to join (with workers); None starts a local one.
    address: str | None = None
    # DataLoader processes per training worker (0: load in the training process).
    data_workers: int = 2
    # Torch device of a plain process; None: CUDA when available, else CPU.
    device: str | None = None
    # Torch threads of each CPU training process; None: torch's default.
    threads: int | None = None
    # Replace a run folder made with another configuration.
    overwrite: bool = False
