"""Small real stores for the trainer's tests: synthetic rooms' exact ground truth written
through the store API, with any task set and depth kind, in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spherical.ade20k import ADE20K_CLASSES
from storage.labelstore import LabelStore, PanoramaEntry, StoreSpec
from synthetic.dataset import pano_name
from synthetic.render import render_erp
from synthetic.scene import generate_scene


def write_truth_store(
    path: Path,
    seeds: list[int],
    height: int = 32,
    tasks: tuple[str, ...] = ("depth", "semantic", "normals"),
    depth_kind: str = "metric_range",
    class_names: tuple[str, ...] = ADE20K_CLASSES,
    ok: bool = True,
) -> LabelStore:
    """A store of the rooms `seeds` rendered at `height`, labels equal to the ground truth
    (relative stores hold inverse range), confidence 1; rows `ok` unless `ok` is False."""
    spec = StoreSpec(
        erp_height=height,
        tasks=tasks,
        depth_kind=depth_kind if "depth" in tasks else None,
        class_names=class_names if "semantic" in tasks else (),
        teachers={},
        layout="",
        fov_deg=(),
        patch_size=0,
        kind="ground_truth",
    )
    entries = [PanoramaEntry(pano_name(s), i, f"room {s}") for i, s in enumerate(seeds)]
    store = LabelStore.create(str(path), spec, entries, {})
    if not ok:
        return store
    for entry, seed in zip(entries, seeds, strict=True):
        render = render_erp(generate_scene(seed), height, dtype=torch.float64)
        rgb = np.clip(np.round(render.rgb.numpy() * 255), 0, 255).astype(np.uint8)
        arrays: dict[str, np.ndarray] = {"rgb": rgb}
        ones = np.ones((height, 2 * height), np.float32)
        if "depth" in tasks:
            depth = render.range.numpy()
            arrays["depth"] = depth if depth_kind == "metric_range" else 1.0 / depth
            arrays["depth_confidence"] = ones
        if "semantic" in tasks:
            arrays["semantic"] = render.semantic.numpy().astype(np.uint8)
            arrays["semantic_confidence"] = ones
        if "normals" in tasks:
            arrays["normals"] = render.normals.numpy()
            arrays["normals_confidence"] = ones
        store.write_panorama(entry.index, arrays, {"pano_id": entry.pano_id, "source": entry.source})
    store.consolidate()
    return store
