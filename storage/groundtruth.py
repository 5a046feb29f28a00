"""Ground-truth maps as PNG files, in the format of the Replica samples of the conventions.

- depth: uint16 ERP range, metres = value / 4096; 0 and 65535 mean "no value" (range up
  to 15.99 m).
- normals: RGB8 world-frame normals, n = rgb / 127.5 - 1; (0, 0, 0) means "no value".
- semantic: uint8 class ids, 255 = ignore.
Files are named `<pano_id>_depth.png`, `<pano_id>_normals.png`, `<pano_id>_semantic.png`.

`ground_truth_files` finds a panorama's files in such a folder and `read_ground_truth` reads
them onto a label grid (`resample_to_labels`), for `mtpano inspect --gt` and `report --gt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

DEPTH_SCALE = 4096.0
DEPTH_INVALID = (0, 65535)
TASK_SUFFIX = {"depth": "_depth.png", "normals": "_normals.png", "semantic": "_semantic.png"}


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _read(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise OSError(f"could not read {path}")
    return image


def write_depth(path: Path, range_m: np.ndarray) -> None:
    """Write an (H,W) float range map in metres; NaN / out-of-range becomes invalid (0)."""
    scaled = np.nan_to_num(range_m * DEPTH_SCALE, nan=0.0)
    encoded = np.where((scaled >= 1) & (scaled < 65535), np.round(scaled), 0).astype(np.uint16)
    _write(path, encoded)


def read_depth(path: Path) -> np.ndarray:
    """(H,W) float32 range in metres, NaN where invalid."""
    raw = _read(path, cv2.IMREAD_UNCHANGED)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"{path}: depth must be a single-channel 16-bit PNG")
    valid = (raw != DEPTH_INVALID[0]) & (raw != DEPTH_INVALID[1])
    return np.where(valid, raw.astype(np.float32) / DEPTH_SCALE, np.nan).astype(np.float32)


def write_normals(path: Path, normals: np.ndarray) -> None:
    """Write (3,H,W) unit normals; NaN becomes (0, 0, 0)."""
    rgb = np.clip(np.round((normals + 1.0) * 127.5), 0, 255)
    rgb = np.where(np.isfinite(normals).all(0, keepdims=True), rgb, 0).astype(np.uint8)
    _write(path, rgb.transpose(1, 2, 0)[..., ::-1])  # (3,H,W) -> (H,W,3) BGR


def read_normals(path: Path) -> np.ndarray:
    """(3,H,W) float32 unit normals, NaN where invalid."""
    bgr = _read(path, cv2.IMREAD_COLOR)
    rgb = bgr[..., ::-1].transpose(2, 0, 1).astype(np.float32)  # (H,W,3) BGR -> (3,H,W) RGB
    n = rgb / 127.5 - 1.0
    norm = np.linalg.norm(n, axis=0, keepdims=True)
    valid = (rgb.sum(0, keepdims=True) > 0) & (norm > 0.5)
    return np.where(valid, n / np.maximum(norm, 1e-6), np.nan).astype(np.float32)


def write_semantic(path: Path, ids: np.ndarray) -> None:
    """Write (H,W) uint8 class ids."""
    _write(path, ids.astype(np.uint8))


def read_semantic(path: Path) -> np.ndarray:
    """(H,W) uint8 class ids."""
    raw = _read(path, cv2.IMREAD_UNCHANGED)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise ValueError(f"{path}: semantic ids must be a single-channel 8-bit PNG")
    return raw


def ground_truth_files(folder: Path, pano_id: str) -> dict[str, Path]:
    """The ground-truth files of a panorama in a folder of `mtpano synth`'s gt/ format:
    `<name>_depth.png`, `<name>_normals.png`, `<name>_semantic.png`, where name is the last
    path component of the panorama id. Tasks without a file are left out."""
    name = pano_id.rsplit("/", 1)[-1]
    files = {task: Path(folder) / f"{name}{suffix}" for task, suffix in TASK_SUFFIX.items()}
    return {task: path for task, path in files.items() if path.is_file()}


def read_ground_truth(files: Mapping[str, Path], erp_height: int) -> dict[str, np.ndarray]:
    """Ground-truth maps resampled to the label grid (H x 2H).

    Returns per task: depth (H,W) float32 range in metres, NaN = invalid; normals (3,H,W)
    float32 unit world-frame normals, NaN = invalid; semantic (H,W) uint8 ids, 255 = ignore.
    Depth and normals are averaged over the valid ground-truth pixels each label pixel covers
    (normals renormalised); semantic ids are sampled at the nearest pixel.

    Raises:
        OSError: a file cannot be read. ValueError: a file is not an ERP map of its kind.
    """
    readers = {"depth": read_depth, "normals": read_normals, "semantic": read_semantic}
    out = {}
    for task, path in files.items():
        value = readers[task](Path(path))
        h, w = value.shape[-2:]
        if w != 2 * h:
            raise ValueError(f"{path}: ground truth must be an ERP image (W = 2H), got {w}x{h}")
        out[task] = resample_to_labels(task, value, erp_height)
    return out


def resample_to_labels(task: str, value: np.ndarray, erp_height: int) -> np.ndarray:
    """One ground-truth map (see `read_ground_truth`) on the H x 2H label grid."""
    size = (2 * erp_height, erp_height)  # cv2 takes (width, height)
    if value.shape[-2:] == (erp_height, 2 * erp_height):
        return value
    if task == "semantic":
        return cv2.resize(value, size, interpolation=cv2.INTER_NEAREST)
    channels = value if value.ndim == 3 else value[None]  # (C,h,w)
    valid = np.isfinite(channels).all(0).astype(np.float32)  # (h,w)
    weight = cv2.resize(valid, size, interpolation=cv2.INTER_AREA)  # (H,W)
    sums = np.stack([cv2.resize(np.nan_to_num(c) * valid, size, interpolation=cv2.INTER_AREA) for c in channels])
    mean = np.where(weight > 0, sums / np.maximum(weight, 1e-12), np.nan)  # (C,H,W)
    if task == "normals":
        norm = np.linalg.norm(mean, axis=0, keepdims=True)
        return np.where(norm > 1e-6, mean / np.maximum(norm, 1e-6), np.nan).astype(np.float32)
    return mean[0].astype(np.float32)
