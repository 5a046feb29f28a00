"""`make bench-labels`: the label pipeline against its teacher, and its scaling with workers.

Inputs: synthetic 2048x1024 panoramas, the default layout (20 icosahedron patches of
518x518), labels at 512 rows. The depth teacher is a randomly initialised Depth Anything V2
of the Small size (DINOv2-S/14 backbone and DPT head of the real checkpoint, so the same
compute), saved and loaded through `hf:` like a real one; no semantic or normals teacher.

Printed, all measured in this run:
1. per-stage time per panorama (medians over the panoramas, from the store's manifest);
2. the teacher's own forward-pass throughput on the same patches (the same teacher object,
   same batches), and the pipeline's throughput in one process using all cores, and their
   ratio (target >= 0.9 on CPU);
3. the pipeline's throughput through Ray with 1 and 2 workers of one torch thread each
   (target: 2 workers >= 1.7x one).
Throughputs are steady-state, from the times the workers finished each panorama: the
panoramas after each worker's first one, over the time from the last of those first ones to
the last one, so start-up (Ray, model loading, the layout's correspondences) is not counted.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timing import machine, table
from pipeline.config import LabelConfig, RunOptions
from pipeline.images import read_panorama
from pipeline.labeler import STAGES
from pipeline.run import run_labels
from pipeline.teachers.base import TeacherCameras
from pipeline.teachers.registry import load_teacher, resolve
from spherical.sampling import erp_to_patches
from storage.labelstore import LabelStore
from synthetic.dataset import write_dataset

PANORAMAS = 8
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def save_depth_anything_small(directory: Path) -> Path:
    """Depth-Anything-V2-Small's architecture (config of depth-anything/Depth-Anything-V2-Small-hf),
    randomly initialised."""
    import json

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


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    model = save_depth_anything_small(root / "depth-anything-v2-small-random")
    data = root / "data"
    write_dataset(data, list(range(PANORAMAS)), height=1024)
    config = LabelConfig(depth_teacher=f"hf:{model}", semantic_teacher="none", normal_teacher="none")
    sources = sorted(str(p) for p in (data / "images").glob("*.png"))
    threads = torch.get_num_threads()

    teacher = teacher_rate(config, sources)
    in_process, store = pipeline_run(
        data / "images", root / "in-process", config, RunOptions(in_process=True, panoramas_per_call=1)
    )
    rows = store.rows()
    stage_rows = []
    total = statistics.median(sum(r[f"t_{s}"] for s in STAGES) for r in rows)
    for stage in STAGES:
        seconds = statistics.median(r[f"t_{stage}"] for r in rows)
        stage_rows.append((stage, f"{seconds:.3f}", f"{100 * seconds / total:.1f}%"))
    stage_rows.append(("total", f"{total:.3f}", "100%"))

    ray_rates = {}
    for workers in (1, 2):
        options = RunOptions(workers=workers, threads_per_worker=1, panoramas_per_call=1)
        ray_rates[workers], _ = pipeline_run(data / "images", root / f"ray-{workers}", config, options)

    print(f"bench-labels: {PANORAMAS} synthetic panoramas 2048x1024, 20 patches 518x518, labels 1024x512,")
    print("depth teacher: Depth Anything V2 Small architecture, random weights, fp32")
    print(f"machine: {machine()}")
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


if __name__ == "__main__":
    main()
