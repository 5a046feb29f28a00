"""`make bench-train`: the trainer's data loading and steps at 512x1024.

Data: panoramas per second through the training DataLoader (`trainer.data.PanoramaDataset`:
read the shards, decode, every default augmentation, collate) with 0, 1 and 2 loader
processes, next to a plain read of the same arrays from the same store
(`LabelStore.read`, in this process), measured in the same run, the two alternating in
rounds. Target: the loader with 2 processes at least 0.8 of the plain read.

Steps: the real loop (`trainer.train.fit`, one process) of the `tiny` and `small` presets at
512x1024, batch 2, with 0 and 2 loader processes: median seconds per step after the first
(warm-up) step, the share of the step spent waiting for data (target: under 5% with 2
loader processes), and the training process's peak resident memory (VmHWM; the loader
processes are separate processes). Every case runs in a fresh process.

The store: synthetic rooms rendered at 512x1024 and imported as ground truth (all three
tasks with their confidences: what a label store holds).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.timing import machine, status_kib, table

HEIGHT = 512
ROOMS = 12
BATCH = 2
LOADER_SAMPLES = 24  # panoramas timed per round and loader
ROUNDS = 3
STEPS = {"tiny": 7, "small": 3}  # the first step is the warm-up
STEP_LOADERS = (0, 2)
MIB = 1024


def make_store(root: Path) -> str:
    """ROOMS synthetic rooms at HEIGHT, imported as a ground-truth store; returns its path."""
    from storage.importers import ImportConfig, import_dataset
    from synthetic.dataset import write_dataset

    write_dataset(root / "rooms", list(range(ROOMS)), height=HEIGHT)
    summary = import_dataset(root / "rooms", str(root / "store"), ImportConfig(format="synth"))
    assert not summary.failed, summary.failed
    return str(root / "store")


def plain_read(url: str, count: int) -> float:
    """Seconds to read `count` panoramas' arrays (rgb, labels, confidences) with `LabelStore.read`."""
    from storage.labelstore import LabelStore

    store = LabelStore.open(url)
    n = store.num_panoramas
    start = time.perf_counter()
    for k in range(count):
        store.read(k % n)
    return time.perf_counter() - start


def loader_read(url: str, workers: int, count: int) -> float:
    """Seconds for the training DataLoader to deliver `count` augmented panoramas, after its
    first batch (the loader processes' start-up is not counted)."""
    from trainer.augment import AugmentConfig
    from trainer.config import TrainOptions
    from trainer.data import PanoramaDataset, StreamSampler, open_store_info, split_samples
    from trainer.train import make_loader

    info = open_store_info(url)
    samples, _ = split_samples([info], 0.0)
    dataset = PanoramaDataset([info], samples, HEIGHT, info.spec.tasks, AugmentConfig())
    loader = make_loader(
        dataset, BATCH, StreamSampler(len(dataset), seed=0), TrainOptions(data_workers=workers), torch.device("cpu")
    )
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(count // BATCH):
        next(batches)
    seconds = time.perf_counter() - start
    del batches, loader
    return seconds


def measure_loading(url: str) -> dict[str, float]:
    """Median panoramas/s of the plain read and of the loader with 0, 1 and 2 processes."""
    rates: dict[str, list[float]] = {"plain": [], "loader 0": [], "loader 1": [], "loader 2": []}
    for _ in range(ROUNDS):
        rates["plain"].append(LOADER_SAMPLES / plain_read(url, LOADER_SAMPLES))
        for workers in (0, 1, 2):
            rates[f"loader {workers}"].append(LOADER_SAMPLES / loader_read(url, workers, LOADER_SAMPLES))
    return {name: statistics.median(values) for name, values in rates.items()}


def measure_steps(url: str, preset: str, loaders: int) -> dict[str, float]:
    """Median seconds per step, data-wait share and peak RSS of a short real run (fresh process)."""
    from trainer.config import TrainConfig, TrainOptions
    from trainer.train import fit, plan_run

    config = TrainConfig.from_preset(
        preset,
        height=HEIGHT,
        batch_size=BATCH,
        steps=STEPS[preset],
        log_every=1,
        val_fraction=0.0,
        checkpoint_every=10**6,
        warmup_steps=1,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        run = fit(plan_run([url], [], Path(run_dir) / "run", config), TrainOptions(data_workers=loaders))
        records = [r for r in run.read_metrics() if r["kind"] == "train"][1:]  # step 1 is the warm-up
    return {
        "step_s": statistics.median(BATCH / r["samples_per_s"] for r in records),
        "data_wait": statistics.median(r["data_wait"] for r in records),
        "peak_mib": status_kib("VmHWM") / MIB,
    }


def main() -> None:
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = make_store(Path(tmp))
        print(f"store: {ROOMS} synthetic rooms, {2 * HEIGHT}x{HEIGHT}, depth + semantic + normals", flush=True)
        rates = measure_loading(url)
        plain = rates["plain"]
        rows = [("plain read (LabelStore.read)", f"{plain:.2f}", "1.00")]
        for w in (0, 1, 2):
            rate = rates[f"loader {w}"]
            name = f"DataLoader, {w} loader process{'es' if w != 1 else ''}, default augmentations"
            rows.append((name, f"{rate:.2f}", f"{rate / plain:.2f}"))
        print("\nData (panoramas/s, medians; target: 2 processes >= 0.8 of the plain read)\n")
        print(table(rows, ("reader", "panoramas/s", "vs plain read")), flush=True)
        step_rows = []
        context = get_context("spawn")
        for preset in STEPS:
            for loaders in STEP_LOADERS:
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(measure_steps, url, preset, loaders).result()
                step_rows.append(
                    (preset, str(loaders), f"{result['step_s']:.3f}", f"{result['data_wait']:.1%}",
                     f"{result['peak_mib']:.0f}")
                )  # fmt: skip
                print(f"  {preset}, {loaders} loader processes: {json.dumps(result)}", file=sys.stderr, flush=True)
        print(f"\nSteps (batch {BATCH}, {2 * HEIGHT}x{HEIGHT}, medians after the first step; target: data wait < 5%)\n")
        print(table(step_rows, ("preset", "loader processes", "s/step", "data wait", "peak RSS (MiB)")))


if __name__ == "__main__":
    main()
