"""Training BridgeNet on label stores: plan a run, then one loop, in one process or in every
worker of a Ray Train `TorchTrainer`.

`plan_run` runs on the driver before anything starts: it opens the stores, checks them,
splits train and validation, derives the model's configuration from the tasks and prepares
the run folder. `train` is the loop (data, model, optimiser, resume, steps, validation,
checkpoints), read top to bottom; `train_func` is the thin Ray Train wrapper that runs the
same loop on every worker with DDP (`prepare_model`, `prepare_data_loader`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from evaluation.metrics import Meter, MetricConfig
from model import BridgeNet, BridgeNetConfig
from model.config import INVARIANT_TASKS, MAIN_TASKS, VARIANT_TASKS
from trainer.checkpoint import load_model, load_training_state, load_weights, save_checkpoint
from trainer.config import BEST_METRICS, ConfigError, TrainConfig, TrainOptions
from trainer.data import (
    DataError,
    PanoramaDataset,
    Sample,
    StoreInfo,
    StreamSampler,
    check_class_lists,
    collate_packed,
    init_data_worker,
    limit_samples,
    open_store_info,
    split_samples,
    store_tasks,
    to_device,
)
from trainer.inference import autocast_dtype, predictions
from trainer.losses import compute_losses
from trainer.runs import TENSORBOARD, RunFolder

LogCallback = Callable[[dict[str, Any]], None]
# Batch keys that stay on the CPU (bookkeeping).
_HOST_KEYS = ("pano_id",)


class TrainError(RuntimeError):
    """A run that cannot go on (too many unreadable panoramas, out of memory, ...)."""


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class RunPlan:
    """Everything decided before training starts (picklable: Ray sends it to every worker)."""

    run_dir: str
    config: TrainConfig
    model_config: BridgeNetConfig
    stores: tuple[StoreInfo, ...]
    roles: tuple[str, ...]  # "train" or "val", per store
    train_samples: tuple[Sample, ...]
    val_samples: tuple[Sample, ...]
    tasks: tuple[str, ...]
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        """train_config.json: what decides the result (train, model, stores) and the notes."""
        from mtpano import __version__

        return {
            "train": self.config.to_dict(),
            "model": self.model_config.to_dict(),
            "stores": [s.record(role) for s, role in zip(self.stores, self.roles, strict=True)],
            "tasks": list(self.tasks),
            "train_panoramas": len(self.train_samples),
            "val_panoramas": len(self.val_samples),
            "derived": list(self.notes),
            "mtpano_version": __version__,
        }

    def model_info(self) -> dict[str, Any]:
        """What every saved model of the run records besides its weights (`read_model_info`)."""
        metric = any(
            s.spec.depth_kind == "metric_range" for s, r in zip(self.stores, self.roles, strict=True) if r == "train"
        )
        return {
            "class_names": list(self.class_names),
            "depth_kind": ("metric_range" if metric else "relative_disparity") if "depth" in self.tasks else None,
            "height": self.config.height,
            "tasks": list(self.tasks),
            "run": self.run_dir,
        }

    @property
    def best_metric(self) -> str:
        return self.config.best_metric or default_best_metric(self.tasks)


def default_best_metric(tasks: Sequence[str]) -> str:
    """The validation figure that picks best/ when the config names none: the first task's."""
    return {"depth": "depth_absrel", "semantic": "semantic_miou", "normals": "normals_mean_deg"}[tasks[0]]


def derive_model_config(
    config: TrainConfig, tasks: tuple[str, ...], num_classes: int | None
) -> tuple[BridgeNetConfig, list[str]]:
    """The BridgeNetConfig of a run: the preset, the tasks and classes the data decide, the
    run's overrides, and the switches a task set needs. Returns it and what was derived.

    A task set without a rotation-variant task (or without an invariant one) cannot have two
    groups: `dual_groups` and `gradient_truncation` are turned off unless the overrides set
    them (then BridgeNetConfig's own message explains the conflict).
    """
    if config.init is not None:
        model, _ = load_model(config.init)
        model_config = model.config
        notes = [f"architecture from --init {config.init} (tasks {', '.join(model_config.tasks)})"]
        missing = [t for t in tasks if t not in model_config.tasks]
        if missing:
            raise ConfigError(f"--init {config.init} has no {', '.join(missing)} output; the stores carry them")
        if "semantic" in tasks and num_classes is not None and num_classes != model_config.num_classes:
            raise ConfigError(
                f"--init {config.init} predicts {model_config.num_classes} classes, the stores have {num_classes}"
            )
        return model_config, notes
    values: dict[str, Any] = {"tasks": tasks}
    notes = [f"tasks {', '.join(tasks)} (from the stores)" if config.tasks is None else f"tasks {', '.join(tasks)}"]
    if num_classes is not None:
        values["num_classes"] = num_classes
        notes.append(f"num_classes {num_classes} (the stores' class list)")
    if config.encoder_checkpoint is not None:
        values["encoder_checkpoint"] = config.encoder_checkpoint
    two_groups = any(t in INVARIANT_TASKS for t in tasks) and any(t in VARIANT_TASKS for t in tasks)
    if not two_groups:
        for switch in ("dual_groups", "gradient_truncation"):
            if switch not in config.model:
                values[switch] = False
                notes.append(f"{switch}=False (tasks {', '.join(tasks)} form one group)")
    try:
        return BridgeNetConfig.from_preset(config.preset, **{**values, **config.model}), notes
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model configuration: {err}") from None


def plan_run(train_urls: Sequence[str], val_urls: Sequence[str], run_dir: str | Path, config: TrainConfig) -> RunPlan:
    """Open and check the stores, split the panoramas, derive the model config.

    Raises DataError / ConfigError (usage errors: nothing has been written).
    """
    if not train_urls:
        raise DataError("no training store given")
    stores = [open_store_info(url) for url in train_urls]
    val_stores = [open_store_info(url) for url in val_urls]
    everything = stores + val_stores
    class_names = check_class_lists(everything)
    available = store_tasks(stores)
    if config.tasks is None:
        tasks = available
    else:
        unknown = [t for t in config.tasks if t not in MAIN_TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; tasks are {MAIN_TASKS}")
        missing = [t for t in config.tasks if t not in available]
        if missing:
            raise DataError(f"no training store carries {', '.join(missing)}")
        tasks = tuple(t for t in MAIN_TASKS if t in config.tasks)
    if val_urls:
        train, _ = split_samples(stores, 0.0)
        val, _ = split_samples(val_stores, 0.0)
        val = [dataclasses.replace(s, store=s.store + len(stores)) for s in val]
    else:
        train, val = split_samples(stores, config.val_fraction)
    if config.batch_size > len(train):
        raise DataError(
            f"batch {config.batch_size} is larger than the training set ({len(train)} panoramas); lower --batch"
        )
    num_classes = len(class_names) if "semantic" in tasks else None
    model_config, notes = derive_model_config(config, tasks, num_classes)
    if config.encoder_checkpoint is not None:
        try:
            BridgeNet(model_config)  # loads and checks the checkpoint against the preset now
        except (OSError, ValueError) as err:
            raise ConfigError(f"--encoder-checkpoint: {err}") from None
    notes.append(f"{len(train)} training and {len(val)} validation panoramas")
    return RunPlan(
        run_dir=str(run_dir),
        config=config,
        model_config=model_config,
        stores=tuple(everything),
        roles=("train",) * len(stores) + ("val",) * len(val_stores),
        train_samples=tuple(train),
        val_samples=tuple(limit_samples(val, config.val_limit)),
        tasks=tasks,
        class_names=class_names,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------- distribution
@dataclass
class Distributed:
    """How the loop talks to its peers; one plain process by default."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    prepare_loader: Callable[[DataLoader], Any] = lambda loader: loader

    def all_reduce(self, tensor: Tensor) -> None:
        """Sum `tensor` over the workers, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)

    def gather(self, value: Any) -> list[Any]:
        """Every worker's `value`, on every worker."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------- pieces of the loop
def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at `step`: linear warm-up to 1, then cosine or poly decay to
    `min_lr_ratio` at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress) ** config.poly_power


def param_groups(model: BridgeNet, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: encoder / the rest at lr x encoder_lr_scale / lr, no weight decay on
    biases and normalisation weights (1-D tensors); frozen parameters left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoder."), p.ndim > 1), []).append(p)
    out = []
    for (is_encoder, decays), params in sorted(groups.items()):
        scale = config.encoder_lr_scale if is_encoder else 1.0
        decay = config.weight_decay if decays else 0.0
        out.append({"params": params, "lr": config.lr * scale, "weight_decay": decay})
    return out


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def meter_config(tasks: Sequence[str], class_names: Sequence[str]) -> MetricConfig:
    """The validation meter of a run with these tasks and class list."""
    return MetricConfig(tasks=tuple(tasks), num_classes=len(class_names) if class_names else 150)


@torch.no_grad()
def validate(model: BridgeNet, loader: DataLoader, plan: RunPlan, dist: Distributed) -> dict[str, Any]:
    """Figures of `model` on the validation panoramas, summed over every worker."""
    model.eval()
    meter = Meter(meter_config(plan.tasks, plan.class_names), device=dist.device)
    dtype = autocast_dtype(dist.device, plan.config.precision)
    for batch in loader:
        batch = to_device(batch, dist.device)
        with torch.autocast(dist.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(batch["rgb"])
        meter.update(predictions(output), batch, batch["pano_id"])
    meter.sync(dist.all_reduce)
    model.train()
    return {"figures": meter.figures(), "panoramas": meter.counts()}


def make_loader(
    dataset: PanoramaDataset, batch: int, sampler: Any, options: TrainOptions, device: torch.device
) -> DataLoader:
    workers = options.data_workers
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        worker_init_fn=init_data_worker if workers > 0 else None,
        collate_fn=collate_packed,
        prefetch_factor=4 if workers > 0 else None,
    )


# ---------------------------------------------------------------------- the loop
def train(plan: RunPlan, options: TrainOptions, dist: Distributed, on_log: LogCallback | None = None) -> None:
    """Train as `plan` says, resuming from the run folder's last checkpoint when there is one.

    Every worker runs this; rank 0 writes the run folder (metrics, TensorBoard, checkpoints).
    """
    config = plan.config
    run = RunFolder(Path(plan.run_dir))
    info = plan.model_info()
    device = dist.device
    if options.threads is not None and device.type == "cpu":
        torch.set_num_threads(options.threads)
    micro_batch, rest = divmod(config.batch_size, dist.world * config.grad_accum)
    assert micro_batch >= 1 and not rest, "fit checks that the batch splits over workers and accumulation"
    dtype = autocast_dtype(device, config.precision)

    # --- model: the same initial weights on every worker (seeded), then the checkpoint's
    torch.manual_seed(config.seed)
    model = BridgeNet(plan.model_config)
    if config.init is not None:
        load_weights(model, config.init)
    if config.freeze_encoder:
        model.encoder.requires_grad_(False)
    model.to(device)

    # --- optimiser, schedule, gradient scaler
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    # --- resume from the last complete checkpoint
    start_step, best, unreadable, read = 0, None, 0, 0
    latest = run.latest_checkpoint()
    if latest is not None:
        state = load_training_state(latest)
        load_weights(model, latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        start_step, best = int(state["step"]), state["best"]
        unreadable, read = int(state["unreadable"]), int(state["read"])
    model = dist.prepare_model(model)
    core: BridgeNet = model.module if hasattr(model, "module") else model

    # --- data: the sampler starts where the checkpoint stopped
    dataset = PanoramaDataset(plan.stores, plan.train_samples, config.height, plan.tasks, config.augment)
    sampler = StreamSampler(len(dataset), config.seed, dist.rank, dist.world, start=start_step * config.batch_size)
    train_loader = dist.prepare_loader(make_loader(dataset, micro_batch, sampler, options, device))
    val_dataset = PanoramaDataset(plan.stores, plan.val_samples[dist.rank :: dist.world], config.height, plan.tasks)
    val_loader = (
        dist.prepare_loader(make_loader(val_dataset, micro_batch, None, options, device)) if plan.val_samples else None
    )
    batches = iter(train_loader)

    if start_step >= config.steps:  # a finished run: nothing to do, nothing to log
        if dist.is_main and on_log is not None:
            on_log({"kind": "end", "step": start_step, "best": best, "already_done": True})
        return
    writer = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        run.truncate_metrics(start_step)
        writer = SummaryWriter(str(run.path / TENSORBOARD), purge_step=start_step + 1)

    def log(record: dict[str, Any]) -> None:
        if not dist.is_main:
            return
        run.append_metrics(record)
        if on_log is not None:
            on_log(record)

    def checkpoint(step: int) -> None:
        rngs = dist.gather(rng_state())
        if dist.is_main:
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "best": best,
                "unreadable": unreadable,
                "read": read,
                "samples_seen": step * config.batch_size,
            }
            save_checkpoint(run.checkpoint_dir(step), core, step, state, info)
            run.prune(config.keep)

    log(
        {
            "kind": "start",
            "step": start_step,
            "steps": config.steps,
            "resumed": latest is not None,
            "workers": dist.world,
            "device": str(device),
            "notes": list(plan.notes),
        }
    )
    best_metric = plan.best_metric
    lower_is_better = BEST_METRICS[best_metric]
    window = {"loss": {}, "count": 0, "wait": 0.0, "began": time.perf_counter()}

    # --- the loop
    for step in range(start_step, config.steps):
        losses_sum: dict[str, float] = {}
        step_unreadable, skipped = 0, []
        try:
            for micro in range(config.grad_accum):
                waited = time.perf_counter()
                batch = to_device(next(batches), device)
                window["wait"] += time.perf_counter() - waited
                bad = ~batch["readable"]
                step_unreadable += int(bad.sum())
                skipped += [p for p, b in zip(batch["pano_id"], bad.tolist(), strict=True) if b]
                last = micro == config.grad_accum - 1
                sync = model.no_sync() if (dist.world > 1 and not last) else nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        output = model(batch["rgb"])
                    losses = compute_losses(output, batch, config.loss)
                    scaler.scale(losses["total"] / config.grad_accum).backward()
                for name, value in losses.items():
                    losses_sum[name] = losses_sum.get(name, 0.0) + float(value.detach()) / config.grad_accum
            scaler.unscale_(optimizer)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        except torch.OutOfMemoryError:
            raise TrainError(
                f"CUDA out of memory with {micro_batch} panoramas of {config.height}x{2 * config.height} per worker: "
                "lower --batch (or raise grad_accum in --config) or --height"
            ) from None
        done = step + 1

        # --- unreadable panoramas: named, counted, and fatal beyond the configured share
        counts = torch.tensor([step_unreadable, micro_batch * config.grad_accum], dtype=torch.float64)
        dist.all_reduce(counts)
        unreadable, read = unreadable + int(counts[0]), read + int(counts[1])
        if counts[0] > 0:
            names = [name for names in dist.gather(skipped) for name in names]
            log({"kind": "skipped", "step": done, "pano_ids": names, "unreadable": unreadable, "read": read})
            if unreadable / read > config.max_unreadable and read >= 20:
                raise TrainError(
                    f"{unreadable} of {read} panoramas read so far could not be read "
                    f"(more than max_unreadable {config.max_unreadable:.0%}); see the warnings above"
                )

        # --- logging: losses averaged over the workers
        for name, value in losses_sum.items():
            window["loss"][name] = window["loss"].get(name, 0.0) + value
        window["count"] += 1
        if done % config.log_every == 0 or done == config.steps:
            names = sorted(window["loss"])
            mean = torch.tensor([window["loss"][n] / window["count"] for n in names], dtype=torch.float64)
            dist.all_reduce(mean)
            seconds = time.perf_counter() - window["began"]
            record = {
                "kind": "train",
                "step": done,
                "lr": config.lr * lr_factor(step, config),  # the rate this step used, outside the encoder
                "loss": {n: float(v) / dist.world for n, v in zip(names, mean.tolist(), strict=True)},
                "samples_per_s": window["count"] * config.batch_size / max(seconds, 1e-9),
                "data_wait": window["wait"] / max(seconds, 1e-9),
            }
            log(record)
            if writer is not None:
                for name, value in record["loss"].items():
                    writer.add_scalar(f"loss/{name}", value, done)
                writer.add_scalar("lr", record["lr"], done)
                writer.add_scalar("samples_per_s", record["samples_per_s"], done)
                writer.add_scalar("data_wait", record["data_wait"], done)
            window = {"loss": {}, "count": 0, "wait": 0.0, "began": time.perf_counter()}

        # --- validation and best/
        if val_loader is not None and ((config.val_every and done % config.val_every == 0) or done == config.steps):
            result = validate(core, val_loader, plan, dist)
            value = result["figures"]["pooled"].get(best_metric, math.nan)
            improved = math.isfinite(value) and (
                best is None or (value < best["value"] if lower_is_better else value > best["value"])
            )
            if improved:
                best = {"step": done, "metric": best_metric, "value": value}
                if dist.is_main:
                    run.save_best(core, done, best_metric, value, info)
            log({"kind": "val", "step": done, **result, "best": best})
            if writer is not None:
                for aggregation, figures in result["figures"].items():
                    for name, figure in figures.items():
                        if math.isfinite(figure):
                            writer.add_scalar(f"val_{aggregation}/{name}", figure, done)
            window["began"] = time.perf_counter()

        # --- checkpoints
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint(done)
            window["began"] = time.perf_counter()

    if dist.is_main:
        run.save_final(core, config.steps, info)
        if best is None:  # no validation set: the last model is the best one there is
            run.save_best(core, config.steps, "final", math.nan, info)
        log({"kind": "end", "step": config.steps, "best": best})
        writer.close()


# ---------------------------------------------------------------------- entry points
def fit(plan: RunPlan, options: TrainOptions, on_log: LogCallback | None = None) -> RunFolder:
    """Prepare the run folder (new, resumed, or replaced with `options.overwrite`) and train,
    in this process or on Ray Train workers (`options.workers`). Returns the run folder."""
    world, accum = options.workers or 1, plan.config.grad_accum
    if plan.config.batch_size % (world * accum):
        raise ConfigError(
            f"batch {plan.config.batch_size} does not split into {world} worker(s) x {accum} accumulation "
            "step(s) of equal micro-batches"
        )
    run = RunFolder.prepare(plan.run_dir, plan.record(), options.overwrite)
    if options.workers is None:
        run_in_process(plan, options, on_log)
    else:
        run_with_ray(plan, options, on_log)
    return run


def run_in_process(plan: RunPlan, options: TrainOptions, on_log: LogCallback | None = None) -> None:
    """The loop in this process, without Ray."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train(plan, options, Distributed(device=device), on_log)


def train_func(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the same loop, with DDP from Ray Train."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    dist = Distributed(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=ray.train.torch.get_device(),
        # Some outputs get no loss on some batches (a store without a task, gradient
        # truncation): DDP must not wait for their gradients.
        prepare_model=lambda m: ray.train.torch.prepare_model(
            m, parallel_strategy_kwargs={"find_unused_parameters": True}
        ),
        # Our sampler already gives each worker its share of one global order (StreamSampler).
        prepare_loader=lambda loader: ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False),
    )
    train(loop_config["plan"], loop_config["options"], dist)


def run_with_ray(plan: RunPlan, options: TrainOptions, on_log: LogCallback | None = None) -> None:
    """The loop on `options.workers` Ray Train workers (one per GPU when there are GPUs)."""
    import ray
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.run import _start_ray

    _start_ray(options.address)
    check_shared_run_folder(Path(plan.run_dir))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = options.workers or max(1, gpus)
    if gpus:
        scaling = ScalingConfig(num_workers=workers, use_gpu=True)
        threads = options.threads
    else:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_worker = max(1.0, cpus // workers)
        scaling = ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": per_worker})
        threads = options.threads or int(per_worker)
    worker_options = dataclasses.replace(options, threads=threads)
    tail = _MetricsTail(RunFolder(Path(plan.run_dir)).metrics_file, on_log)
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"plan": plan, "options": worker_options},
        scaling_config=scaling,
        # Ray Train's notes (resources requested, workers started) would bury the progress bar;
        # its warnings (waiting for resources) and errors still show.
        run_config=RunConfig(
            storage_path=str(Path(plan.run_dir).resolve() / "ray"),
            name="train",
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    tail.start()
    try:
        trainer.fit()
    finally:
        tail.stop()


def check_shared_run_folder(run_dir: Path) -> None:
    """With nodes besides this one, check that each of them sees `run_dir` (shared storage):
    rank 0 may run on any node and every worker reads the checkpoints."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here and n["Resources"].get("CPU", 0) > 0]
    if not others:
        return
    marker = run_dir / f".shared-{os.getpid()}"
    marker.write_text("")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        checks = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(marker.resolve())
            )
            for n in others
        ]
        blind = [n["NodeManagerAddress"] for n, ok in zip(others, ray.get(checks), strict=True) if not ok]
    finally:
        marker.unlink()
    if blind:
        raise ConfigError(
            f"{run_dir} is not shared storage: node(s) {', '.join(blind)} cannot see it; "
            "give --out a folder every node mounts at the same path"
        )


class _MetricsTail:
    """Follows metrics.jsonl from a thread and hands every new record to `on_log`: the driver's
    view of a run whose loop writes from a Ray worker."""

    def __init__(self, path: Path, on_log: LogCallback | None) -> None:
        self.path, self.on_log = path, on_log
        self.offset = path.stat().st_size if path.exists() else 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> None:
        if self.on_log is not None:
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
        self._read()

    def _follow(self) -> None:
        while not self.stopped.wait(0.5):
            self._read()

    def _read(self) -> None:
        if self.on_log is None or not self.path.exists():
            return
        size = self.path.stat().st_size
        if size < self.offset:  # truncated by a resume: read from its start
            self.offset = 0
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete, _, _ = chunk.rpartition("\n")
        if not complete and not chunk.endswith("\n"):
            return
        self.offset += len(complete) + 1
        for line in complete.splitlines():
            if line.strip():
                self.on_log(json.loads(line))
