"""The work of one prediction worker (`mtpano predict`): a trained BridgeNet labels decoded
panoramas into a store in the label format, so that `inspect`, `report`, `verify`, `compare`
and the trainer read its predictions like labels.

`PanoramaPredictor` loads its model once in `__init__` and predicts a batch of decoded
panoramas (`pipeline.images.decode_batch`) per call, exactly as `PanoramaLabeler` labels
them: the same driver (`pipeline.run`) streams the panoramas to it in one process or on Ray
actors (one per GPU), and every panorama ends as a row: its shards and an `ok` row, or a
`failed` row with a one-line reason.

Predictions in the store: depth (range in metres for a model trained on metric stores;
inverse-range-like values otherwise, `depth_kind` says which), semantic ids with the softmax
probability of the chosen class as their confidence, normals (world frame); depth and normals
have confidence 1 wherever the prediction is finite. Optional files per panorama: `--png`
images (depth, normals, semantic over the panorama, in the previews' colour maps) and `--ply`
coloured point clouds from metric depth (range x ray, world frame).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import RunOptions
from pipeline.images import resize_erp, unit_rgb
from pipeline.quality import array_figures
from pipeline.run import RunSummary, UsageError, run_store
from spherical.ade20k import IGNORE_ID
from storage.labelstore import KIND_PREDICTIONS, LabelStore, StoreSpec
from storage.pointcloud import erp_point_cloud, write_ply

STAGES = ("decode", "predict", "write")
DEFAULT_HEIGHT = 512  # a model folder that records no training height predicts at this one


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class PanoramaPredictor:
    """A prediction worker (see the module doc). Build it once per device; call it per batch."""

    def __init__(
        self,
        store_url: str,
        model_dir: str,
        device: str | None = None,
        threads: int | None = None,
        precision: str = "auto",
        png_dir: str | None = None,
        ply_dir: str | None = None,
        ply_stride: int = 2,
    ) -> None:
        from trainer.checkpoint import load_model

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.store = LabelStore.open(store_url, mode="r+")
        self.spec = self.store.spec
        model, _ = load_model(model_dir)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.png_dir = Path(png_dir) if png_dir else None
        self.ply_dir = Path(ply_dir) if ply_dir else None
        self.ply_stride = ply_stride
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # recorded in each row, to trace a panorama

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Predict a batch of decoded panoramas and write them to the store.

        Returns "index" (K,) int64, "pano_id" (K,) str, "status" (K,) "ok" | "failed",
        "error" (K,) str and "seconds" (K,) float, as `PanoramaLabeler` does.
        """
        from trainer.inference import predict

        K = len(batch["index"])
        errors = [str(e) for e in batch["error"]]
        seconds = [{"decode": float(t), "predict": 0.0, "write": 0.0} for t in batch["t_decode"]]
        live = [k for k in range(K) if not errors[k]]
        H = self.spec.erp_height
        images = {k: resize_erp(unit_rgb(np.asarray(batch["image"][k])), H) for k in live}
        outputs: dict[int, dict[str, np.ndarray]] = {}
        if live:
            began = time.perf_counter()
            try:
                rgb = torch.from_numpy(np.stack([images[k] for k in live])).permute(
                    0, 3, 1, 2
                )  # (B,H,W,3) -> (B,3,H,W)
                with torch.inference_mode():
                    pred = predict(self.model, rgb.to(self.device), self.precision)
                for i, k in enumerate(live):
                    outputs[k] = {name: value[i].float().cpu().numpy() for name, value in pred.items()}
            except Exception as err:  # a failed forward pass fails this call's panoramas, not the run
                for k in live:
                    errors[k] = _one_line(err)
            for k in live:
                seconds[k]["predict"] = (time.perf_counter() - began) / len(live)
        for k in range(K):
            row: dict[str, Any] = {"pano_id": str(batch["pano_id"][k]), "source": str(batch["source"][k])}
            row["worker"] = self.worker
            index = int(batch["index"][k])
            if not errors[k]:
                began = time.perf_counter()
                try:
                    arrays = self._arrays(images[k], outputs[k])
                    self.store.write_arrays(index, arrays)
                    self._exports(row["pano_id"], images[k], arrays)
                    row.update(array_figures(self.spec, arrays, None))
                    seconds[k]["write"] = time.perf_counter() - began
                    self.store.commit(index, {**row, **self._timings(seconds[k])})
                    continue
                except Exception as err:  # this panorama fails; the others of the call go on
                    errors[k] = _one_line(err)
            self.store.write_failure(index, {**row, **self._timings(seconds[k])}, errors[k])
        return {
            "index": np.asarray(batch["index"], np.int64),
            "pano_id": np.asarray(batch["pano_id"], dtype=object),
            "status": np.array(["failed" if e else "ok" for e in errors], dtype=object),
            "error": np.array(errors, dtype=object),
            "seconds": np.array([sum(s.values()) for s in seconds]),
        }

    def _arrays(self, image: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The store's arrays of one panorama from its (H,W,3) image and its predictions."""
        out = {
            "rgb": np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)
        }  # (H,W,3) -> (3,H,W)
        if "depth" in self.spec.tasks:
            depth = pred["depth"]
            valid = np.isfinite(depth) & (depth > 0)
            out["depth"] = np.where(valid, depth, np.nan).astype(np.float16)
            out["depth_confidence"] = valid.astype(np.float16)
        if "semantic" in self.spec.tasks:
            out["semantic"] = np.where(pred["semantic"] < IGNORE_ID, pred["semantic"], IGNORE_ID).astype(np.uint8)
            out["semantic_confidence"] = pred["semantic_confidence"].astype(np.float16)
        if "normals" in self.spec.tasks:
            normals = pred["normals"]
            valid = np.isfinite(normals).all(0)
            out["normals"] = np.where(valid[None], normals, np.nan).astype(np.float16)
            out["normals_confidence"] = valid.astype(np.float16)
        return out

    def _exports(self, pano_id: str, image: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """--png images and the --ply point cloud of one panorama (ids may hold folders)."""
        if self.png_dir is not None:
            from mtpano.visualize import colorize_depth, colorize_normals, colorize_semantic, write_rgb

            base = self.png_dir / pano_id
            base.parent.mkdir(parents=True, exist_ok=True)
            rgb = arrays["rgb"].transpose(1, 2, 0)  # (3,H,W) -> (H,W,3)
            if "depth" in arrays:
                write_rgb(f"{base}_depth.png", colorize_depth(arrays["depth"].astype(np.float32)))
            if "normals" in arrays:
                write_rgb(f"{base}_normals.png", colorize_normals(arrays["normals"].astype(np.float32)))
            if "semantic" in arrays:
                classes = colorize_semantic(arrays["semantic"]).astype(np.float32)
                blend = np.round(0.45 * rgb + 0.55 * classes).astype(np.uint8)
                write_rgb(f"{base}_semantic.png", blend)
        if self.ply_dir is not None:
            path = self.ply_dir / f"{pano_id}.ply"
            path.parent.mkdir(parents=True, exist_ok=True)
            points, colors = erp_point_cloud(arrays["depth"].astype(np.float32), image, self.ply_stride)
            write_ply(path, points, colors)

    @staticmethod
    def _timings(seconds: dict[str, float]) -> dict[str, float]:
        return {**{f"t_{s}": seconds[s] for s in STAGES}, "finished_at": time.time()}


def prediction_spec(model_dir: Path, erp_height: int | None) -> StoreSpec:
    """The spec of a store of `model_dir`'s predictions at `erp_height` (default: the height
    the model trained at): its tasks, class names and depth kind, kind "predictions", and the
    model and step in `source` (`mtpano compare` names them)."""
    from model import BridgeNetConfig
    from spherical.ade20k import ADE20K_CLASSES
    from trainer.checkpoint import CONFIG_FILE, read_model_info

    info = read_model_info(model_dir)
    config = BridgeNetConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text())["config"])
    class_names = tuple(info.get("class_names") or ())
    if "semantic" in config.tasks and not class_names:
        if config.num_classes != len(ADE20K_CLASSES):
            raise ValueError(f"{model_dir} records no class names and does not predict the 150 ADE20K classes")
        class_names = ADE20K_CLASSES
    height = erp_height or info.get("height") or DEFAULT_HEIGHT
    return StoreSpec(
        erp_height=int(height),
        tasks=tuple(t for t in ("depth", "semantic", "normals") if t in config.tasks),
        depth_kind=(info.get("depth_kind") or "metric_range") if "depth" in config.tasks else None,
        class_names=class_names if "semantic" in config.tasks else (),
        teachers={},
        layout="",
        fov_deg=(),
        patch_size=0,
        kind=KIND_PREDICTIONS,
        source={"model": str(model_dir.resolve()), "step": info["step"], "run": info.get("run")},
    )


def run_predict(
    data: str,
    out: str,
    model: str,
    options: RunOptions,
    checkpoint: str | None = None,
    erp_height: int | None = None,
    png_dir: str | None = None,
    ply_dir: str | None = None,
    ply_stride: int = 2,
    on_start: Callable[[int, int], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Predict the panoramas of `data` (a folder or a list file) with a trained BridgeNet (a run
    folder or a saved model; `checkpoint` as `mtpano evaluate`'s) into the store at `out`, with
    `mtpano labels`' driver: resumable, bad files failed one by one, Ray workers over GPUs.

    Raises:
        UsageError: not a model, a point cloud asked of a model without metric depth, bad
            data or store (nothing was written).
    """
    from evaluation.evaluate import EvaluationError, resolve_model_dir

    try:
        model_dir = resolve_model_dir(model, checkpoint)
        spec = prediction_spec(model_dir, erp_height)
    except (EvaluationError, OSError, ValueError, KeyError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    if ply_dir is not None and spec.depth_kind != "metric_range":
        raise UsageError(f"--ply needs metric depth: {model_dir} predicts {spec.depth_kind or 'no depth'}")
    kwargs = {
        "model_dir": str(model_dir),
        "png_dir": png_dir,
        "ply_dir": ply_dir,
        "ply_stride": ply_stride,
    }
    return run_store(data, out, spec, PanoramaPredictor, kwargs, options, on_start, on_result)
