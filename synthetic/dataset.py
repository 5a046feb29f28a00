"""Write synthetic panoramas to disk, with their ground truth and scene descriptions.

Layout of a data set folder:
    images/room_<seed>.png        RGB panorama (8-bit)
    gt/room_<seed>_depth.png      range, normals and ADE20K ids (storage.groundtruth format)
    scenes/room_<seed>.json       the Scene, to re-render anything exactly
The seed in the name is what simulated teachers use to rebuild the room.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from storage import groundtruth
from synthetic.render import ErpRender, render_erp
from synthetic.scene import Scene, SceneConfig, generate_scene

_NAME = re.compile(r"room_(\d+)$")


def pano_name(seed: int) -> str:
    """File stem of the synthetic panorama of `seed`."""
    return f"room_{seed:05d}"


def seed_from_name(pano_id: str) -> int:
    """Seed of a synthetic panorama id (its file stem `room_<seed>`, in any folder)."""
    match = _NAME.search(pano_id.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"{pano_id!r} is not a synthetic panorama (expected a name room_<seed>)")
    return int(match.group(1))


def rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """(3,H,W) float RGB in [0, 1] -> (H,W,3) uint8."""
    return np.clip(np.round(rgb.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def write_panorama(root: Path, scene: Scene, render: ErpRender) -> Path:
    """Write one rendered scene into the data set at `root`; returns the image path."""
    name = pano_name(scene.seed)
    image_path = root / "images" / f"{name}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(image_path), rgb_to_uint8(render.rgb.numpy())[..., ::-1]):
        raise OSError(f"could not write {image_path}")
    gt = root / "gt"
    groundtruth.write_depth(gt / f"{name}_depth.png", render.range.numpy())
    groundtruth.write_normals(gt / f"{name}_normals.png", render.normals.numpy())
    groundtruth.write_semantic(gt / f"{name}_semantic.png", render.semantic.numpy())
    scene_path = root / "scenes" / f"{name}.json"
    scene_path.parent.mkdir(parents=True, exist_ok=True)
    scene_path.write_text(scene.to_json())
    return image_path


def write_dataset(
    root: Path,
    seeds: list[int],
    height: int,
    config: SceneConfig | None = None,
    on_done: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Render and write the rooms of `seeds` at ERP height `height`; returns image paths."""
    paths = []
    for seed in seeds:
        scene = generate_scene(seed, config)
        path = write_panorama(root, scene, render_erp(scene, height))
        paths.append(path)
        if on_done is not None:
            on_done(path)
    return paths
