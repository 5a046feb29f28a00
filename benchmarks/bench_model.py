"""`make bench-model`: BridgeNet parameter counts, and time and peak memory at 512x1024.

Parameters are counted for every preset on the meta device (no weights are allocated).
For `tiny` and `small`, one 512x1024 panorama goes through the full BridgeNet and through
its baseline (`config.baseline()`: the same DINOv2 encoder and DPT decoders with every
panoramic addition off), measured in the same run with their passes alternating: forward
(eval, no grad) and forward+backward (train, a loss on every output) median times, and the
time of the encoder alone. The overhead of the additions is full / baseline - 1 (target: at
most 30%). The CPU runs one torch thread (see CPU_THREADS) and the machine's load average
is printed: other work on a shared machine shows in the times.

Peak memory, CPU (Linux): every measurement runs in a fresh process (no allocator cache
from an earlier pass); the kernel's resident-set high-water mark is reset to the current
resident set just before the first pass (writing 5 to /proc/self/clear_refs), and the peak
is the high-water mark after it (VmHWM) minus the resident set before it (VmRSS): the memory
the pass itself needs above the model and the input. `resource.getrusage(...).ru_maxrss`
cannot be reset and, across fork + exec, starts from the parent's size, so it would report
the parent whenever the parent is larger. CUDA: `torch.cuda.max_memory_allocated` during the
first pass minus the allocation before it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

import torch

from benchmarks.timing import interleaved_median_times, machine, peak_bytes, table
from model import PRESETS, BridgeNet, BridgeNetConfig

HEIGHT = 512
TIMED_PRESETS = ("tiny", "small")
REPEATS = {"tiny": 9, "small": 3}
VARIANTS = ("baseline", "full")
# One CPU thread per process: on the shared 2-core machine, two threads stall whenever another
# process holds a core, and the times stop meaning anything; one thread only slows down.
CPU_THREADS = 1
MIB = 2**20
T = TypeVar("T")


def build_config(preset: str, variant: str) -> BridgeNetConfig:
    config = BridgeNetConfig.from_preset(preset)
    return config.baseline() if variant == "baseline" else config


def parameter_counts(config: BridgeNetConfig) -> dict[str, int]:
    """Parameters of the whole model and of its parts, without allocating them."""
    with torch.device("meta"):
        model = BridgeNet(config)

    def count(module: torch.nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    return {
        "total": count(model),
        "encoder": count(model.encoder),
        "neck": count(model.neck),
        "decoders": count(model.decoders),
    }


def _passes(model: BridgeNet, images: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The measured passes: forward (eval, no grad), forward+backward (train), the encoder alone."""

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(images)

    def train() -> None:
        model.train()
        out = model(images)
        loss = sum(v.mean() for k, v in out.items() if k != "aux") + sum(v.mean() for v in out["aux"].values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    def encoder() -> None:
        model.eval()
        with torch.no_grad():
            model.encode(images)

    return {"forward": forward, "train": train, "encoder": encoder}


def _setup(preset: str, variant: str, device: torch.device) -> tuple[BridgeNet, torch.Tensor]:
    torch.set_num_threads(CPU_THREADS)
    torch.manual_seed(0)
    model = BridgeNet(build_config(preset, variant)).to(device)
    return model, torch.rand(1, 3, HEIGHT, 2 * HEIGHT, device=device)


def measure_peak(preset: str, variant: str, mode: str, device_name: str) -> float:
    """Peak memory (MiB) of the first `mode` pass; meant to run in a fresh process."""
    device = torch.device(device_name)
    pass_fn = _passes(*_setup(preset, variant, device))[mode]
    return peak_bytes(pass_fn, device) / MIB


def measure_times(preset: str, device_name: str) -> dict[tuple[str, str], float]:
    """Median seconds of every (variant, pass). The variants' passes alternate within each
    round, so a change in the machine's load hits the full model and the baseline alike."""
    device = torch.device(device_name)
    fns = {
        f"{variant}/{name}": fn
        for variant in VARIANTS
        for name, fn in _passes(*_setup(preset, variant, device)).items()
    }
    times = interleaved_median_times(fns, repeats=REPEATS[preset])
    return {tuple(key.split("/")): seconds for key, seconds in times.items()}


def _in_fresh_process(fn: Callable[..., T], *args: str) -> T:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _progress(message: str) -> None:
    print(f"  {message} ...", file=sys.stderr, flush=True)


def main() -> None:
    torch.set_num_threads(CPU_THREADS)
    print(f"bench-model: BridgeNet, one {2 * HEIGHT}x{HEIGHT} ERP panorama (batch 1), float32")
    print(f"machine: {machine()}")
    load_before = os.getloadavg()[0]

    rows = []
    for preset in PRESETS:
        full = parameter_counts(build_config(preset, "full"))
        baseline = parameter_counts(build_config(preset, "baseline"))
        rows.append(
            (
                preset,
                f"{full['total'] / 1e6:.2f}M",
                f"{full['encoder'] / 1e6:.2f}M",
                f"{full['neck'] / 1e6:.2f}M",
                f"{full['decoders'] / 1e6:.2f}M",
                f"{baseline['total'] / 1e6:.2f}M",
                f"{full['total'] / baseline['total'] - 1:+.1%}",
            )
        )
    print("\nparameters (full BridgeNet; baseline = encoder + DPT decoders, no panoramic additions)")
    print(table(rows, ("preset", "total", "encoder", "neck", "decoders + aux heads", "baseline total", "vs baseline")))

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        timing_rows, overhead_rows = [], []
        for preset in TIMED_PRESETS:
            peaks = {}
            for variant in VARIANTS:
                for mode in ("forward", "train"):
                    _progress(f"{device} {preset} {variant} {mode}: peak memory")
                    peaks[variant, mode] = _in_fresh_process(measure_peak, preset, variant, mode, device)
            _progress(f"{device} {preset}: {REPEATS[preset]} timed rounds")
            times = _in_fresh_process(measure_times, preset, device)
            for variant in VARIANTS:
                timing_rows.append(
                    (
                        preset,
                        variant,
                        f"{times[variant, 'forward']:.3f}",
                        f"{times[variant, 'train']:.3f}",
                        f"{times[variant, 'encoder']:.3f}",
                        f"{peaks[variant, 'forward']:.0f}",
                        f"{peaks[variant, 'train']:.0f}",
                    )
                )
            overhead_rows.append(
                (
                    preset,
                    f"{times['full', 'forward'] / times['baseline', 'forward'] - 1:+.1%}",
                    f"{times['full', 'train'] / times['baseline', 'train'] - 1:+.1%}",
                    f"{1 - times['full', 'encoder'] / times['full', 'forward']:.0%}",
                    f"{1 - times['baseline', 'forward'] / times['full', 'forward']:.0%}",
                )
            )
        rounds = ", ".join(f"{REPEATS[p]} ({p})" for p in TIMED_PRESETS)
        print(f"\n{device}: median seconds over {rounds} alternating rounds; peak memory in MiB above model and input")
        header = ("preset", "model", "forward (s)", "fwd+bwd (s)", "encoder fwd (s)", "peak fwd", "peak fwd+bwd")
        print(table(timing_rows, header))
        print(f"\n{device}: cost of the panoramic additions (target: overhead at most +30%)")
        header = (
            "preset",
            "overhead forward",
            "overhead fwd+bwd",
            "forward time outside the encoder",
            "forward time outside encoder + DPT decoders",
        )
        print(table(overhead_rows, header))
    print(f"\n1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)")


if __name__ == "__main__":
    main()
