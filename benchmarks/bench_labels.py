"""`make bench-labels`: what the label pipeline costs around its teachers, for every task and
label size, how long a run takes to start, and how it keeps up with a real-sized teacher.

Inputs: synthetic 2048x1024 panoramas, the default layout (20 icosahedron patches of 518x518).
Printed, all measured in this run, on this machine:

1. Non-teacher cost per panorama, with no-cost teachers (`benchmarks.free_teachers`: depth,
   normals, and 150-class semantic probabilities at a quarter of the patch size, as
   Mask2Former gives them), one process, all cores, through `run_labels` as `--in-process`
   runs it: per-stage medians from the rows (decode, sample, fuse and its share per task,
   quality figures, write), at labels 512x1024 and 1024x2048 (also at FoV 90°), for depth
   alone, depth and normals, and all three tasks (also with geometric normals, and with a
   relative depth teacher, whose alignment solves a scale and a shift per patch). The
   reference is pyequilib's `pers2equi` re-projecting the same 20 RGB patches to the same
   label size, in a process of its own (`Pers2EquiReference`), run after every panorama
   (interleaved), median; and the same with its freed memory kept for reuse, as the
   labeller keeps its own (`pipeline.memory`), which speeds `pers2equi` more than it speeds
   us. Targets: the non-teacher total at most 0.35x `pers2equi`; semantic fusion at most 2x
   depth fusion. The first call of a run is left out (it also computes how teacher maps of
   a new resolution are read).
2. Start-up of `mtpano labels` with Ray and one worker, as a user runs it: process start to
   the first panorama's row, against `ray.init` alone (in another process); target: at most
   10 s more. The pieces are measured apart: the driver's imports, `ray.init`, the worker's
   set-up (teachers, the layout's correspondences and seams) and its first call.
3. A randomly initialised Depth Anything V2 of the Small size (same compute as the real
   checkpoint), loaded through `hf:`: the pipeline's throughput against the teacher's own
   forward passes on the same patches, with freed memory kept as in the workers (target >=
   0.9), and Ray with 2 workers against 1
   (target >= 1.7x). Steady state, from the times the workers finished each panorama.
4. Fusion alone (`PanoramaFusion`) on every device there is (the CPU, and a CUDA GPU when
   present), the no-cost teachers' outputs already on the device: milliseconds per panorama
   for each task alone and all three, at every label size of section 1, interleaved, median,
   with freed memory kept as in the workers. Semantic twice: with maps the caller keeps, and
   with maps given fresh for each panorama as a teacher gives them, so that the fusion's
   finish releases them, as in the pipeline. Target on a GPU: all three tasks under 20 ms at
   512x1024.

`python -m benchmarks.bench_labels [cost] [startup] [teacher] [fusion]` runs some of the sections.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import free_teachers
from benchmarks.timing import machine, table
from pipeline.config import LabelConfig, RunOptions
from pipeline.fusion import FusionGeometry, PanoramaFusion
from pipeline.images import decode_batch, find_panoramas, read_panorama
from pipeline.labeler import STAGES, TEACHER_ORDER, PanoramaLabeler
from pipeline.memory import freed_memory_kept, keep_freed_memory
from pipeline.run import prepare_store, resolve_teachers, run_labels, store_spec
from pipeline.teachers.base import METRIC_ZDEPTH, TeacherCameras
from pipeline.teachers.registry import load_teacher, resolve
from spherical.ade20k import ADE20K_CLASSES
from spherical.equilib_adapter import _equilib_rotation, _zyx_angles
from spherical.sampling import erp_to_patches
from storage.labelstore import LabelStore
from synthetic.dataset import write_dataset

PANORAMAS = 8
TEACHER_PANORAMAS = 8
PANORAMA_HEIGHT = 1024
FREE = "py:benchmarks.free_teachers:"
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
NON_TEACHER = ("decode", "sample", "fuse", "figures", "write")


@dataclass(frozen=True)
class Case:
    """One configuration of the non-teacher cost section."""

    erp_height: int
    fov_deg: float | None
    tasks: tuple[str, ...]
    geometric_normals: bool = False  # normals from the depth teacher's patches instead of their own teacher
    relative_depth: bool = False  # affine-invariant disparity (aligned with a scale and a shift per patch)

    @property
    def name(self) -> str:
        fov = f", FoV {self.fov_deg:g}°" if self.fov_deg else ""
        return f"{self.erp_height}x{2 * self.erp_height}{fov}"

    @property
    def task_names(self) -> str:
        names = {
            "normals": "geometric normals" if self.geometric_normals else "normals",
            "depth": "relative depth" if self.relative_depth else "depth",
        }
        return ", ".join(names.get(t, t) for t in self.tasks)

    def config(self) -> LabelConfig:
        specs = {task: (f"{FREE}{task}" if task in self.tasks else "none") for task in ("depth", "semantic", "normals")}
        if self.geometric_normals:
            specs["normals"] = "geometric"
        if self.relative_depth:
            specs["depth"] = f"{FREE}relative_depth"
        return LabelConfig(
            depth_teacher=specs["depth"],
            semantic_teacher=specs["semantic"],
            normal_teacher=specs["normals"],
            erp_height=self.erp_height,
            fov_deg=self.fov_deg,
        )


CASES = (
    Case(512, None, ("depth",)),
    Case(512, None, ("depth", "normals")),
    Case(512, None, ("depth", "semantic", "normals")),
    Case(512, None, ("depth", "semantic", "normals"), geometric_normals=True),
    Case(1024, None, ("depth", "semantic", "normals")),
    Case(1024, 90.0, ("depth", "normals")),
    Case(1024, 90.0, ("depth", "semantic", "normals")),
    Case(512, None, ("depth", "semantic", "normals"), relative_depth=True),
    Case(1024, 90.0, ("depth", "semantic", "normals"), relative_depth=True),
)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------- 1. non-teacher cost
def pers2equi_timer(config: LabelConfig, source: str):
    """A function that re-projects the 20 RGB patches of `source` to the label size with
    pyequilib's `pers2equi` and returns the seconds it took."""
    from equilib import pers2equi

    cameras = config.patch_layout().cameras(config.patch_size)
    image = torch.from_numpy(read_panorama(source)).permute(2, 0, 1)[None]  # (H,W,3) -> (1,3,H,W)
    patches = erp_to_patches(image, cameras)[0].contiguous()  # (P,3,h,w)
    rotations = _zyx_angles(_equilib_rotation(cameras).transpose(1, 2))
    H, fov = config.erp_height, float(cameras.fov_x_deg[0])

    def run() -> float:
        began = time.perf_counter()
        pers2equi(patches, rotations, H, 2 * H, fov, z_down=True, clip_output=False)
        return time.perf_counter() - began

    return run


def _pers2equi_child(conn, config: LabelConfig, source: str, keep_memory: bool) -> None:
    """The reference's process: time `pers2equi` each time the parent asks; None stops it.
    With `keep_memory`, its freed memory is kept for reuse, as the labelling workers do."""
    if keep_memory:
        keep_freed_memory()
    run = pers2equi_timer(config, source)
    conn.send("ready")
    while conn.recv() is not None:
        conn.send(run())


class Pers2EquiReference:
    """pyequilib's `pers2equi` in a process of its own, as a user runs it (or with its freed
    memory kept, as the labelling workers keep theirs), so that the labeller's memory state
    does not change its times: in the labeller's process, with a malloc setting that was being
    tried, its median at 512x1024 once swung from 0.7 s to 0.39 s between two cases of one run.
    Each call times one run (interleaved with the panoramas, so both see the same load)."""

    def __init__(self, config: LabelConfig, source: str, keep_memory: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_pers2equi_child, args=(child, config, source, keep_memory), daemon=True)
        self.process.start()
        assert self.conn.recv() == "ready", "the pers2equi reference did not start"

    def __call__(self) -> float:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


def non_teacher_cost(data: Path, root: Path, case: Case) -> dict[str, float]:
    """Median seconds per panorama of every stage (and per task of fusion), the non-teacher
    total, and `pers2equi` interleaved with the panoramas."""
    config = case.config()
    sources = sorted(str(p) for p in data.glob("*.png"))
    references = {"pers2equi": Pers2EquiReference(config, sources[0])}
    references["pers2equi_kept"] = Pers2EquiReference(config, sources[0], keep_memory=True)
    reference_seconds: dict[str, list[float]] = {name: [] for name in references}

    def time_references(_: dict) -> None:
        for name, reference in references.items():
            reference_seconds[name].append(reference())

    options = RunOptions(in_process=True)
    try:
        summary = run_labels(
            str(data), str(root / f"cost-{case.name}-{case.task_names}"), config, options, on_result=time_references
        )
    finally:
        for reference in references.values():
            reference.close()
    assert summary.exit_code == 0, summary.failed
    rows = sorted(LabelStore.open(summary.store).rows(), key=lambda r: r["index"])[options.panoramas_per_call :]
    out = {stage: median([r[f"t_{stage}"] for r in rows]) for stage in STAGES}
    for task in case.tasks:
        out[f"fuse_{task}"] = median([r[f"t_fuse_{task}"] for r in rows])
    out["non_teacher"] = median([sum(r[f"t_{s}"] for s in NON_TEACHER) for r in rows])
    for name, seconds in reference_seconds.items():
        out[name] = median(seconds[options.panoramas_per_call :])
    return out


def cost_section(data: Path, root: Path) -> None:
    threads = torch.get_num_threads()
    print(f"## non-teacher cost per panorama (one process, {threads} torch threads; medians, seconds)")
    print()
    rows = []
    for case in CASES:
        load = os.getloadavg()[0]
        r = non_teacher_cost(data, root, case)
        per_task = " / ".join(
            f"{r[f'fuse_{t}']:.3f}" if t in case.tasks else "-" for t in ("depth", "semantic", "normals")
        )
        rows.append(
            (
                case.name,
                case.task_names,
                *(f"{r[s]:.3f}" for s in ("decode", "sample", "fuse")),
                per_task,
                *(f"{r[s]:.3f}" for s in ("figures", "write", "non_teacher", "pers2equi")),
                f"{r['non_teacher'] / r['pers2equi']:.2f}",
                f"{r['pers2equi_kept']:.3f}",
                f"{r['non_teacher'] / r['pers2equi_kept']:.2f}",
                f"{load:.1f}",
            )
        )
        print(f"  {case.name} {case.task_names}: done", file=sys.stderr)
    header = (
        "labels", "tasks", "decode", "sample", "fuse", "fuse depth / semantic / normals", "figures", "write",
        "non-teacher", "pers2equi", "ratio", "pers2equi, memory kept", "ratio to it", "load",
    )  # fmt: skip
    print(table(rows, header))
    print()
    print("ratio: non-teacher total / pers2equi on the same 20 patches to the same label size (target <= 0.35);")
    print("pers2equi, memory kept: the same with its freed memory kept for reuse, as the labeller's workers")
    print("keep theirs (`pipeline.memory`); load: the machine's 1-minute load average when the case started.")


# ---------------------------------------------------------------------- 2. start-up
RAY_INIT = """
import logging, time
import ray
began = time.perf_counter()
ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
print(time.perf_counter() - began)
"""

IMPORTS = """
import time
began = time.perf_counter()
import pipeline.run
print(time.perf_counter() - began)
"""


def _python(code: str) -> float:
    """Run `code` in a fresh interpreter; its last printed number."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return float(run.stdout.split()[-1])


def first_row_seconds(data: Path, out: Path) -> tuple[float, float]:
    """Seconds from starting `mtpano labels` (Ray, one worker) to its first row file, and to its end."""
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("mtpano")
    teachers = [f"--{t}-teacher" if t != "normals" else "--normal-teacher" for t in ("depth", "semantic", "normals")]
    specs = [f"{FREE}{t}" for t in ("depth", "semantic", "normals")]
    args = [a for pair in zip(teachers, specs, strict=True) for a in pair]
    began = time.perf_counter()
    proc = subprocess.Popen([str(exe), "labels", str(data), "--out", str(out), "--workers", "1", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = float("nan")
    while proc.poll() is None:
        if first != first and any((out / "rows").glob("*.json")):
            first = time.perf_counter() - began
        time.sleep(0.02)
    assert proc.returncode == 0, f"mtpano labels exited with {proc.returncode}"
    return first, time.perf_counter() - began


def worker_setup_seconds(data: Path, root: Path) -> tuple[float, float]:
    """Seconds to build a worker (teachers, the layout's correspondences and seams) and of its
    first call (two panoramas), in this process."""
    config = LabelConfig(
        depth_teacher=f"{FREE}depth", semantic_teacher=f"{FREE}semantic", normal_teacher=f"{FREE}normals"
    )
    teachers = resolve_teachers(config)
    found = find_panoramas(str(data))
    store = prepare_store(str(root / "setup"), store_spec(config, teachers), found, True, {})
    began = time.perf_counter()
    labeler = PanoramaLabeler(store.url, config, teachers)
    setup = time.perf_counter() - began
    batch = {
        "index": np.array([0, 1], np.int64),
        "pano_id": np.array([p for p, _ in found[:2]], dtype=object),
        "source": np.array([s for _, s in found[:2]], dtype=object),
    }
    began = time.perf_counter()
    labeler(decode_batch(batch))
    return setup, time.perf_counter() - began


STARTUP_RUNS = 3


def startup_section(data: Path, root: Path) -> None:
    loads, firsts, ends, inits = [], [], [], []
    for _ in range(STARTUP_RUNS):
        loads.append(os.getloadavg()[0])
        first, end = first_row_seconds(data, root / "startup")
        firsts.append(first)
        ends.append(end)
        inits.append(_python(RAY_INIT))
    first, end, ray_init = (statistics.median(v) for v in (firsts, ends, inits))
    imports = _python(IMPORTS)
    setup, call = worker_setup_seconds(data, root)
    rest = first - ray_init - imports - setup - call
    print(
        f"## start-up: `mtpano labels` with Ray and 1 worker, all three no-cost teachers, labels 512x1024, "
        f"{PANORAMAS} panoramas (medians of {STARTUP_RUNS} runs)"
    )
    print()
    rows = [
        ("process start to the first panorama's row", f"{first:.1f}"),
        ("ray.init alone (another process)", f"{ray_init:.1f}"),
        ("beyond ray.init (target <= 10 s)", f"{first - ray_init:.1f}"),
        ("  the driver's imports", f"{imports:.1f}"),
        ("  the worker's set-up: teachers, correspondences, seams", f"{setup:.1f}"),
        ("  the worker's first call: 2 panoramas decoded, labelled, written", f"{call:.1f}"),
        ("  the rest: Ray scheduling, the worker's process and imports", f"{rest:.1f}"),
        (f"process start to the end of the run ({PANORAMAS} panoramas)", f"{end:.1f}"),
    ]
    print(table(rows, ("", "seconds")))
    print()
    print(
        "runs (first row / ray.init / end): "
        + ", ".join(f"{f:.1f}/{i:.1f}/{e:.1f}" for f, i, e in zip(firsts, inits, ends, strict=True))
        + "; load: "
        + ", ".join(f"{load:.1f}" for load in loads)
    )


# ---------------------------------------------------------------------- 3. a real-sized teacher
def save_depth_anything_small(directory: Path) -> Path:
    """Depth-Anything-V2-Small's architecture (config of depth-anything/Depth-Anything-V2-Small-hf),
    randomly initialised."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        image_size=518,
        patch_size=14,
        out_features=["stage3", "stage6", "stage9", "stage12"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(directory, safe_serialization=True)
    processor = {"size": {"height": 518, "width": 518}, "ensure_multiple_of": 14, "keep_aspect_ratio": True}
    (directory / "preprocessor_config.json").write_text(json.dumps({**processor, **IMAGENET}))
    return directory


def steady_rate(store: LabelStore, workers: int) -> float:
    """Panoramas per second in steady state, from the times the workers finished each
    panorama (the rows' `finished_at`; the driver sees results later, in bunches): the
    panoramas after each worker's first one, over the time from the last of those first
    ones to the last one."""
    times = sorted(r["finished_at"] for r in store.rows())
    return (len(times) - workers) / (times[-1] - times[workers - 1])


def teacher_rate(config: LabelConfig, sources: list[str]) -> float:
    """Panoramas per second of the depth teacher alone on each panorama's 20 patches."""
    teacher = load_teacher(resolve(config.depth_teacher, "depth"), "cpu")
    cameras = config.patch_layout().cameras(config.patch_size)
    batch = teacher.batch_size
    seconds = []
    for source in sources:
        image = torch.from_numpy(read_panorama(source)).permute(2, 0, 1)[None]  # (H,W,3) -> (1,3,H,W)
        patches = erp_to_patches(image, cameras)[0]  # (P,3,h,w)
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(cameras), batch):
                ids = [f"pano{len(seconds)}"] * len(cameras[i : i + batch])
                teacher.predict(patches[i : i + batch], TeacherCameras.from_cameras(cameras[i : i + batch], ids))
        seconds.append(time.perf_counter() - start)
    return 1.0 / statistics.median(seconds)


def pipeline_run(data: Path, out: Path, config: LabelConfig, options: RunOptions) -> tuple[float, LabelStore]:
    """Steady-state panoramas per second of one run, and its store."""
    summary = run_labels(str(data), str(out), config, options)
    assert summary.exit_code == 0, summary.failed
    store = LabelStore.open(str(out))
    return steady_rate(store, options.workers or 1), store


def teacher_section(root: Path) -> None:
    model = save_depth_anything_small(root / "depth-anything-v2-small-random")
    data = root / "teacher-data"
    write_dataset(data, list(range(TEACHER_PANORAMAS)), height=PANORAMA_HEIGHT)
    config = LabelConfig(depth_teacher=f"hf:{model}", semantic_teacher="none", normal_teacher="none")
    sources = sorted(str(p) for p in (data / "images").glob("*.png"))
    threads = torch.get_num_threads()

    with freed_memory_kept():  # as the workers run it
        teacher = teacher_rate(config, sources)
    in_process, store = pipeline_run(
        data / "images", root / "in-process", config, RunOptions(in_process=True, panoramas_per_call=1)
    )
    rows = store.rows()
    total = statistics.median(sum(r[f"t_{s}"] for s in STAGES) for r in rows)
    stage_rows = []
    for stage in STAGES:
        seconds = statistics.median(r[f"t_{stage}"] for r in rows)
        stage_rows.append((stage, f"{seconds:.3f}", f"{100 * seconds / total:.1f}%"))
    stage_rows.append(("total", f"{total:.3f}", "100%"))
    ray_rates = {}
    for workers in (1, 2):
        options = RunOptions(workers=workers, threads_per_worker=1, panoramas_per_call=1)
        ray_rates[workers], _ = pipeline_run(data / "images", root / f"ray-{workers}", config, options)

    print(f"## a real-sized teacher: Depth Anything V2 Small architecture, random weights, fp32; {TEACHER_PANORAMAS}")
    print("panoramas, depth only, labels 512x1024")
    print()
    print(f"per-stage time per panorama (one process, {threads} threads; medians)")
    print(table(stage_rows, ("stage", "seconds", "share")))
    print()
    print(
        table(
            [
                (f"teacher forward passes alone ({threads} threads)", f"{teacher:.3f}", "1.00"),
                (f"pipeline, one process ({threads} threads)", f"{in_process:.3f}", f"{in_process / teacher:.2f}"),
            ],
            ("throughput", "panoramas/s", "ratio to teacher"),
        )
    )
    print()
    print(
        table(
            [
                ("Ray, 1 worker x 1 thread", f"{ray_rates[1]:.3f}", "1.00"),
                ("Ray, 2 workers x 1 thread", f"{ray_rates[2]:.3f}", f"{ray_rates[2] / ray_rates[1]:.2f}"),
            ],
            ("throughput", "panoramas/s", "speed-up"),
        )
    )


# ---------------------------------------------------------------------- 4. fusion alone
FUSION_PANORAMAS = 10  # timed per contender, after one warm-up
FUSION_CASES = ((512, None), (1024, None), (1024, 90.0))  # label height, FoV (None: the layout's)


def fusion_contenders(device: torch.device, erp_height: int, fov_deg: float | None) -> dict[str, Callable[[], float]]:
    """Functions that fuse one panorama with `PanoramaFusion` (the layout's 20 patches in
    teacher batches of 8, as the labeller gives them), the no-cost teachers' outputs already
    on `device`: each task alone, semantic with fresh maps, and all three (fresh maps)."""
    config = LabelConfig(erp_height=erp_height, fov_deg=fov_deg)
    cameras = config.patch_layout().cameras(config.patch_size)
    geometry = FusionGeometry.build(cameras.to(device), erp_height, config.fusion)
    P = len(cameras)
    teacher_cameras = TeacherCameras.from_cameras(cameras, ["bench"] * P)
    images = torch.zeros(P, 3, config.patch_size, config.patch_size)
    outputs = {  # made on the CPU, then moved
        "depth": free_teachers.depth().predict(images, teacher_cameras).to(device),  # (P,h,w)
        "semantic": free_teachers.semantic().predict(images, teacher_cameras).to(device),  # (P,150,h/4,w/4)
        "normals": free_teachers.normals().predict(images, teacher_cameras).to(device),  # (P,3,h,w)
    }
    batches = [list(range(start, min(P, start + 8))) for start in range(0, P, 8)]

    def fuse(tasks: tuple[str, ...], fresh_maps: bool) -> float:
        """Seconds to fuse one panorama of `tasks`."""
        # Fresh maps are cloned before the clock starts (a teacher's page faults are its own);
        # the fusion then holds the only reference, so its finish releases them.
        given = {task: [outputs[task][ids[0] : ids[-1] + 1] for ids in batches] for task in tasks}
        if fresh_maps and "semantic" in tasks:
            given["semantic"] = [maps.clone() for maps in given["semantic"]]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        fusion = PanoramaFusion(
            geometry,
            config.fusion,
            METRIC_ZDEPTH if "depth" in tasks else None,
            len(ADE20K_CLASSES) if "semantic" in tasks else None,
            normals="normals" in tasks,
        )
        for task in (t for t in TEACHER_ORDER if t in tasks):
            add = {"depth": fusion.add_depth, "semantic": fusion.add_semantic, "normals": fusion.add_normals}[task]
            for ids, batch in zip(batches, given[task], strict=True):
                add(ids, batch)
        given.clear()
        fusion.finish()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    return {
        "depth": lambda: fuse(("depth",), False),
        "normals": lambda: fuse(("normals",), False),
        "semantic": lambda: fuse(("semantic",), False),
        "semantic_fresh": lambda: fuse(("semantic",), True),
        "all": lambda: fuse(("depth", "semantic", "normals"), True),
    }


def fusion_section() -> None:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"## fusion alone, ms per panorama (outputs on the device; medians of {FUSION_PANORAMAS}, interleaved)")
    print()
    rows = []
    for device in devices:
        for erp_height, fov_deg in FUSION_CASES:
            contenders = fusion_contenders(device, erp_height, fov_deg)
            times: dict[str, list[float]] = {name: [] for name in contenders}
            with freed_memory_kept():  # as the workers run
                for fn in contenders.values():  # warm-up: the first call computes how maps are read
                    fn()
                for _ in range(FUSION_PANORAMAS):
                    for name, fn in contenders.items():
                        times[name].append(fn())
            ms = {name: 1000 * median(t) for name, t in times.items()}
            name = Case(erp_height, fov_deg, ()).name
            rows.append(
                (
                    device.type,
                    name,
                    *(f"{ms[k]:.1f}" for k in ("depth", "normals", "semantic", "semantic_fresh", "all")),
                    f"{ms['semantic'] / ms['depth']:.2f} / {ms['semantic_fresh'] / ms['depth']:.2f}",
                )
            )
            print(f"  fusion {device.type} {name}: done", file=sys.stderr)
    header = (
        "device", "labels", "depth", "normals", "semantic, maps kept", "semantic, maps fresh",
        "all three (fresh)", "semantic / depth (kept / fresh)",
    )  # fmt: skip
    print(table(rows, header))
    print()
    print("semantic, maps fresh: the fusion's finish releases the teacher's maps, as in the pipeline;")
    print("target on a GPU: all three under 20 ms at 512x1024.")


def main() -> None:
    sections = sys.argv[1:] or ["cost", "startup", "teacher", "fusion"]
    root = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    print(f"bench-labels: synthetic {2 * PANORAMA_HEIGHT}x{PANORAMA_HEIGHT} panoramas, 20 icosahedron patches 518x518")
    print(f"machine: {machine()}")
    print()
    data = root / "data"
    if "cost" in sections or "startup" in sections:
        write_dataset(data, list(range(PANORAMAS)), height=PANORAMA_HEIGHT)
    if "cost" in sections:
        cost_section(data / "images", root)
        print()
    if "startup" in sections:
        startup_section(data / "images", root)
        print()
    if "teacher" in sections:
        teacher_section(root)
        print()
    if "fusion" in sections:
        fusion_section()


if __name__ == "__main__":
    main()
