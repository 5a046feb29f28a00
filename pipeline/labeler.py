"""The work of one labelling worker: decode panoramas, run teachers on their patches, fuse,
write.

Two pieces, as the driver (`pipeline.run`) runs them: `pipeline.images.decode_batch`, a CPU
function that reads and decodes panoramas (in its own light module, so that decoding workers
never import torch), and `PanoramaLabeler`, a callable class that loads its teachers and
everything that depends only on the layout and the sizes once in `__init__`, and labels a
batch of decoded panoramas per call. Both take and return `dict[str, np.ndarray]` batches,
so they run and test without Ray too.

A call labels K panoramas together: their P patches each are sampled on the teacher's
device, and each teacher runs over the K*P patches in batches of its `batch_size`, so a
batch spans panoramas. Each output is fused into its panorama's running state at once
(`pipeline.fusion.PanoramaFusion`), so memory does not grow with the number of patches.
Every panorama ends as a row in the store: its shards and an `ok` row, or a `failed` row
with a one-line reason; one panorama's failure never stops the others.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import LabelConfig
from pipeline.fusion import FusedLabels, FusionGeometry, PanoramaFusion
from pipeline.images import resize_erp, rgb8, sample_scale
from pipeline.quality import SeamGeometry, fused_figures
from pipeline.teachers.base import Prediction, TeacherCameras, TeacherError
from pipeline.teachers.registry import ResolvedTeacher, load_teacher
from spherical.ade20k import IGNORE_ID
from spherical.sampling import pad_samples, padded_buffer, patch_sampling_grid, patches_from_padded
from storage.labelstore import LabelStore, StoreSpec

STAGES = ("decode", "sample", "teacher", "fuse", "figures", "write")


@dataclass
class _Panorama:
    """One panorama of a call, while it is being labelled."""

    index: int
    pano_id: str
    source: str
    image: np.ndarray
    fusion: PanoramaFusion | None = None
    error: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    depth_maps: dict[int, Tensor] = field(default_factory=dict)  # raw depth per patch (geometric normals)
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # --keep-patches outputs


# Semantic first: its class maps (203 MB a panorama at 512x1024) stream through the caches
# before depth and normals write their per-entry state, which is then warmer when fused (all
# three fused at 512x1024: 185 -> 172 ms, medians of six interleaved runs of eight panoramas).
TEACHER_ORDER = ("semantic", "depth", "normals")


def _unpack(output: Tensor | Prediction) -> tuple[Tensor, Tensor | None]:
    if isinstance(output, Prediction):
        return output.value, output.confidence
    return output, None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class PanoramaLabeler:
    """A labelling worker (see the module doc). Build it once per device; call it per batch."""

    def __init__(
        self,
        store_url: str,
        config: LabelConfig,
        teachers: dict[str, ResolvedTeacher],
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.config = config
        self.store = LabelStore.open(store_url, mode="r+")
        self.spec: StoreSpec = self.store.spec
        self.resolved = teachers
        self.teachers = {task: load_teacher(r, self.device) for task, r in teachers.items()}
        cameras = config.patch_layout().cameras(config.patch_size, device=self.device)
        self.cameras = cameras
        # Everything that depends only on the layout and the sizes, once per worker.
        self.geometry = FusionGeometry.build(cameras, config.erp_height, config.fusion)
        self.seams = SeamGeometry.from_mapping(self.geometry.mapping)
        # (panorama height, its patch sampling grid, its padded image's buffer), kept from call to call
        self._sampling: tuple[int, Tensor, Tensor] | None = None
        self._patches: Tensor | None = None  # see `_patch_buffer`
        depth = teachers.get("depth")
        self.depth_kind = depth.depth_kind if depth is not None else None
        semantic = teachers.get("semantic")
        self.class_names = semantic.class_names if semantic is not None else None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # recorded in each row, to trace a panorama

    # ------------------------------------------------------------------ helpers
    def _cameras(self, owners: list[tuple[int, int]], panos: list[_Panorama]) -> TeacherCameras:
        patch = [n for _, n in owners]
        return TeacherCameras.from_cameras(self.cameras[patch], [panos[k].pano_id for k, _ in owners])

    def _check_output(self, task: str, value: Tensor, batch: int) -> None:
        """Refuse teacher outputs of the wrong shape (a plugin's bug) with a clear message."""
        channels = {"depth": None, "normals": 3, "semantic": len(self.class_names or ())}[task]
        expected = 3 if channels is None else 4
        ok = value.ndim == expected and value.shape[0] == batch
        if ok and channels is not None:
            ok = value.shape[1] == channels
        if ok:
            h, w = value.shape[-2:]
            ok = abs(h / w - 1.0) < 1e-6 and h > 0
        if not ok:
            shape = f"({batch}, {channels}, h, w)" if channels else f"({batch}, h, w)"
            raise TeacherError(f"{task} teacher returned shape {tuple(value.shape)}, expected {shape} with h = w")

    def _keep(self, pano: _Panorama, task: str, patch: int, value: Tensor) -> None:
        """Record a teacher's raw output of one patch at patch size (--keep-patches)."""
        s, P = self.config.patch_size, len(self.cameras)
        if task == "depth":
            arr = pano.kept.setdefault("patches/depth", np.full((P, s, s), np.nan, np.float32))
            arr[patch] = F.interpolate(value[None, None].float(), (s, s), mode="bilinear")[0, 0].cpu().numpy()
        elif task == "normals":
            arr = pano.kept.setdefault("patches/normals", np.full((P, 3, s, s), np.nan, np.float16))
            n = F.normalize(F.interpolate(value[None].float(), (s, s), mode="bilinear")[0], dim=0)
            arr[patch] = n.cpu().numpy()
        else:
            conf, label = value.max(0)
            label = F.interpolate(label[None, None].float(), (s, s), mode="nearest")[0, 0]
            conf = F.interpolate(conf[None, None].float(), (s, s), mode="nearest")[0, 0]
            arr = pano.kept.setdefault("patches/semantic", np.full((P, s, s), IGNORE_ID, np.uint8))
            arr[patch] = label.cpu().numpy().astype(np.uint8)
            arr_c = pano.kept.setdefault("patches/semantic_confidence", np.zeros((P, s, s), np.float16))
            arr_c[patch] = conf.cpu().numpy()

    # ------------------------------------------------------------------ stages
    def _patch_buffer(self, panoramas: int) -> Tensor:
        """(panoramas*P,3,h,w) float32 memory for the patches of a call, kept from call to call."""
        P, s = len(self.cameras), self.config.patch_size
        if self._patches is None or len(self._patches) < panoramas * P:
            self._patches = torch.empty(panoramas * P, 3, s, s, device=self.device)
        return self._patches[: panoramas * P]

    def _sample(self, pano: _Panorama, out: Tensor) -> Tensor:
        """(P,3,h,w) float32 RGB patches in [0,1] of a panorama, on the device, written into `out`."""
        array = pano.image
        if array.dtype == np.uint16:  # torch's uint16 lacks arithmetic kernels on some devices
            array = array.astype(np.int32)
        elif not array.flags.writeable:  # arrays from Ray's object store; torch wants writable memory
            array = array.copy()
        samples = torch.from_numpy(array).to(self.device)  # (H,W,3) uint8, or int32 holding 16-bit samples
        height = samples.shape[0]
        if self._sampling is None or self._sampling[0] != height:  # panoramas of a data set share a size
            padded = padded_buffer(height, 3, self.device)
            self._sampling = (height, patch_sampling_grid(self.cameras, height), padded)
        _, grid, padded = self._sampling
        pad_samples(samples, sample_scale(pano.image), out=padded)
        patches = patches_from_padded(padded, self.cameras, grid=grid, out=out[None])[0]  # (P,3,h,w)
        if self.config.keep_patches:
            rgb = (patches.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
            pano.kept["patches/rgb"] = rgb
            pano.kept["patches/rotation"] = self.cameras.rotation.float().cpu().numpy()
            pano.kept["patches/fov_x_deg"] = self.cameras.fov_x_deg.float().cpu().numpy()
        return patches

    def _run_teacher(self, task: str, patches: Tensor, owners: list[tuple[int, int]], panos: list[_Panorama]) -> None:
        """Run `task`'s teacher over all patches of the call and fuse its outputs."""
        teacher = self.teachers[task]
        batch = int(getattr(teacher, "batch_size", 8))
        for start in range(0, len(owners), batch):
            chunk = owners[start : start + batch]
            cameras = self._cameras(chunk, panos)
            began = time.perf_counter()
            with torch.inference_mode():
                value, conf = _unpack(teacher.predict(patches[start : start + len(chunk)], cameras))
            self._check_output(task, value, len(chunk))
            self._share_time(chunk, panos, "teacher", time.perf_counter() - began)
            self._fuse(task, value, conf, chunk, panos)

    def _share_time(self, owners: list[tuple[int, int]], panos: list[_Panorama], stage: str, seconds: float) -> None:
        """Attribute a batch's time to its panoramas in proportion to their patches in it."""
        for k, _ in owners:
            panos[k].seconds[stage] += seconds / len(owners)

    def _fuse(
        self, task: str, value: Tensor, conf: Tensor | None, owners: list[tuple[int, int]], panos: list[_Panorama]
    ) -> None:
        by_pano: dict[int, list[int]] = defaultdict(list)
        for i, (k, _) in enumerate(owners):
            by_pano[k].append(i)
        for k, rows in by_pano.items():
            pano = panos[k]
            if pano.error:
                continue
            began = time.perf_counter()
            patch_ids = [owners[i][1] for i in rows]
            # Owners are grouped by panorama, so a panorama's rows are a slice: a view, not a copy.
            assert rows == list(range(rows[0], rows[-1] + 1)), "a panorama's patches must be contiguous in a batch"
            v = value[rows[0] : rows[-1] + 1]
            c = conf[rows[0] : rows[-1] + 1] if conf is not None else None
            if task == "depth":
                pano.fusion.add_depth(patch_ids, v, c)
                if self.resolved.get("normals") is not None and self.resolved["normals"].from_depth:
                    pano.depth_maps.update({n: v[i] for i, n in enumerate(patch_ids)})
            elif task == "normals":
                pano.fusion.add_normals(patch_ids, v, c)
            else:
                pano.fusion.add_semantic(patch_ids, v, c)
            if self.config.keep_patches:
                for i, n in enumerate(patch_ids):
                    self._keep(pano, task, n, v[i])
            pano.seconds["fuse"] += time.perf_counter() - began

    def _normals_from_depth(self, pano: _Panorama) -> None:
        """Normals of a from-depth teacher, from the panorama's aligned patch depth."""
        teacher = self.teachers["normals"]
        P = len(self.cameras)
        batch = int(getattr(teacher, "batch_size", 8))
        for start in range(0, P, batch):
            patch_ids = list(range(start, min(P, start + batch)))
            began = time.perf_counter()
            raw = torch.stack([pano.depth_maps[n] for n in patch_ids])  # (b,h',w')
            zdepth = pano.fusion.aligned_patch_zdepth(patch_ids, raw)
            cameras = TeacherCameras.from_cameras(self.cameras[patch_ids], [pano.pano_id] * len(patch_ids))
            with torch.inference_mode():
                value, conf = _unpack(teacher.predict_from_depth(zdepth, cameras))
            self._check_output("normals", value, len(patch_ids))
            pano.seconds["teacher"] += time.perf_counter() - began
            self._fuse("normals", value, conf, [(0, n) for n in patch_ids], [pano])
        pano.depth_maps.clear()

    def _arrays(self, pano: _Panorama, labels: FusedLabels) -> dict[str, Tensor]:
        """The store's arrays of one panorama, in the store's dtypes, on the device."""
        H = self.spec.erp_height
        rgb = torch.from_numpy(rgb8(resize_erp(pano.image, H))).to(self.device)
        out = {"rgb": rgb.permute(2, 0, 1)}  # (H,W,3) -> (3,H,W)
        if labels.depth is not None:
            out["depth"] = labels.depth.half()
            out["depth_confidence"] = labels.depth_confidence.half()
        if labels.semantic is not None:
            out["semantic"] = torch.where(labels.semantic >= 0, labels.semantic, IGNORE_ID).to(torch.uint8)
            out["semantic_confidence"] = labels.semantic_confidence.half()
        if labels.normals is not None:
            out["normals"] = labels.normals.half()
            out["normals_confidence"] = labels.normals_confidence.half()
        return out

    # ------------------------------------------------------------------ call
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Label a batch of decoded panoramas (see `decode_batch`) and write them to the store.

        Returns:
            "index" (K,) int64, "pano_id" (K,) str, "status" (K,) "ok" | "failed",
            "error" (K,) str (one line, "" when ok) and "seconds" (K,) float total time.
        """
        panos = [
            _Panorama(int(i), str(p), str(s), np.asarray(img), error=str(e))
            for i, p, s, img, e in zip(
                batch["index"], batch["pano_id"], batch["source"], batch["image"], batch["error"], strict=True
            )
        ]
        for pano, t in zip(panos, batch["t_decode"], strict=True):
            pano.seconds["decode"] = float(t)
        live = [k for k, p in enumerate(panos) if not p.error]
        P = len(self.cameras)
        all_patches = self._patch_buffer(len(live))  # (K*P,3,h,w)
        owners = []
        for i, k in enumerate(live):
            pano = panos[k]
            began = time.perf_counter()
            pano.fusion = PanoramaFusion(
                self.geometry,
                self.config.fusion,
                self.depth_kind,
                len(self.class_names) if self.class_names is not None else None,
                normals="normals" in self.teachers,
            )
            self._sample(pano, all_patches[i * P : (i + 1) * P])
            owners += [(k, n) for n in range(P)]
            pano.seconds["sample"] = time.perf_counter() - began
        if live:
            try:
                for task in TEACHER_ORDER:
                    if task in self.teachers and not self.resolved[task].from_depth:
                        self._run_teacher(task, all_patches, owners, panos)
            except Exception as err:  # a teacher failure fails the panoramas of this call, not the run
                message = _one_line(err)
                for k in live:
                    panos[k].error = message
        for pano in panos:
            self._finish(pano)
        return {
            "index": np.array([p.index for p in panos], np.int64),
            "pano_id": np.array([p.pano_id for p in panos], dtype=object),
            "status": np.array(["failed" if p.error else "ok" for p in panos], dtype=object),
            "error": np.array([p.error for p in panos], dtype=object),
            "seconds": np.array([sum(p.seconds.values()) for p in panos]),
        }

    def _finish(self, pano: _Panorama) -> None:
        """Fuse and write one panorama, or record its failure."""
        row: dict[str, Any] = {"pano_id": pano.pano_id, "source": pano.source, "worker": self.worker}
        if not pano.error:
            try:
                if "normals" in self.teachers and self.resolved["normals"].from_depth:
                    self._normals_from_depth(pano)
                began = time.perf_counter()
                labels = pano.fusion.finish()
                row.update(labels.stats)
                pano.seconds["fuse"] += time.perf_counter() - began
                row.update({f"t_fuse_{task}": seconds for task, seconds in pano.fusion.seconds.items()})
                began = time.perf_counter()
                arrays = self._arrays(pano, labels)  # in the store's dtypes: part of writing
                converting = time.perf_counter() - began
                began = time.perf_counter()
                row.update(fused_figures(arrays, self.seams, len(self.spec.class_names)))  # on the stored values
                pano.seconds["figures"] = time.perf_counter() - began
                began = time.perf_counter()
                self.store.write_arrays(pano.index, {**{k: v.cpu().numpy() for k, v in arrays.items()}, **pano.kept})
                pano.seconds["write"] = converting + time.perf_counter() - began
                self.store.commit(pano.index, {**row, **self._timings(pano)})
                return
            except Exception as err:  # this panorama fails; the others of the call go on
                pano.error = _one_line(err)
            finally:
                pano.fusion = None
        self.store.write_failure(pano.index, {**row, **self._timings(pano)}, pano.error)

    @staticmethod
    def _timings(pano: _Panorama) -> dict[str, float]:
        """Row columns: seconds per stage, and when the panorama was finished (Unix time, so
        a run's throughput can be read off the store)."""
        return {**{f"t_{s}": pano.seconds[s] for s in STAGES}, "finished_at": time.time()}
