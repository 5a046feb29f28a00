"""`stanford2d3d`: the equirectangular panoramas of 2D-3D-Semantics (Armeni et al. 2017).

Layout (the dataset's README, github.com/alexsax/2D-3D-Semantics):

    assets/semantic_labels.json                        (or semantic_labels.json at the top)
    area_<n>/pano/rgb/camera_<uuid>_<room>_frame_equirectangular_domain_rgb.png
    area_<n>/pano/depth/..._depth.png                  uint16, 1/512 m, 65535 = missing
    area_<n>/pano/semantic/..._semantic.png            RGB = 24-bit index into semantic_labels.json
    area_<n>/pano/normal/..._normals.png               RGB8 127.5-centred, global frame, #808080 = missing

Areas are area_1 .. area_4, area_5a, area_5b, area_6. Ids are the RGB paths relative to SRC
without extension. docs/datasets.md lists the sources of every fact and what is unconfirmed.
"""

from __future__ import annotations

import json
from functools import cached_property

import numpy as np

from evaluation.classes import STANFORD2D3D_CLASSES
from spherical.ade20k import IGNORE_ID
from storage.importers.base import (
    Z_UP_FRAME_MATRIX,
    DatasetReader,
    NormalsFrame,
    PanoramaMaps,
    SourcePanorama,
    UsageError,
    decode_depth,
    decode_normals,
    lookup_ids,
    read_image,
    read_rgb,
    relative_id,
    require,
)

DEPTH_METRES_PER_UNIT = 1.0 / 512.0  # README: "a sensitivity of 1/512m"
DEPTH_INVALID = (0, 65535)  # README: missing = 2^16 - 1; 0 (no distance) is ours
LABEL_FILES = ("assets/semantic_labels.json", "semantic_labels.json")
SUFFIXES = {"depth": "depth", "semantic": "semantic", "normals": "normals"}
FOLDERS = {"rgb": "rgb", "depth": "depth", "semantic": "semantic", "normals": "normal"}


class Stanford2D3DReader(DatasetReader):
    name = "stanford2d3d"
    description = "2D-3D-Semantics panoramas: area_*/pano/{rgb,depth,semantic,normal}"
    tasks = ("depth", "semantic", "normals")
    has_split_file = True
    normals_frame = NormalsFrame(
        Z_UP_FRAME_MATRIX,
        fit_yaw=True,
        note="global z-up frame (README); heading per panorama fitted to the normals of its depth",
    )

    def class_names(self) -> tuple[str, ...]:
        if not len(self._label_table):  # read here: a missing label list is a usage error
            raise UsageError(f"{self.root}: the label list is empty")
        return STANFORD2D3D_CLASSES

    @cached_property
    def _label_table(self) -> np.ndarray:
        """(L,) uint8: class id of each index of semantic_labels.json ("<class>_<instance>_<room
        type>_<room>_<area>"; "<UNK>" and unknown classes -> 255)."""
        path = next((self.root / p for p in LABEL_FILES if (self.root / p).is_file()), None)
        if path is None:
            raise UsageError(
                f"{self.root}: no {' or '.join(LABEL_FILES)}: the semantic images index this label list "
                "(it ships with the dataset's assets/)"
            )
        try:
            labels = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: cannot read the label list: {err}") from None
        ids = {name: i for i, name in enumerate(STANFORD2D3D_CLASSES)}
        return np.array([ids.get(str(label).split("_")[0], IGNORE_ID) for label in labels], np.uint8)

    def find(self, split: str | None) -> list[SourcePanorama]:
        areas = sorted(p.name for p in self.root.glob("area_*") if (p / "pano" / "rgb").is_dir())
        if not areas:
            raise UsageError(f"{self.root}: no area_*/pano/rgb folders (not the Stanford2D3D layout)")
        if split is not None:
            wanted = self.split_table[split]
            missing = sorted(set(wanted) - set(areas))
            if missing == sorted(wanted):
                raise UsageError(f"{self.root}: none of the areas of split {split} ({', '.join(wanted)})")
            areas = [a for a in areas if a in wanted]
        out = []
        for area in areas:
            pano = self.root / area / "pano"
            for rgb in sorted((pano / "rgb").glob("*_rgb.png")):
                stem = rgb.name[: -len("rgb.png")]
                files = {"rgb": rgb}
                files.update({m: pano / FOLDERS[m] / f"{stem}{SUFFIXES[m]}.png" for m in SUFFIXES})
                out.append(SourcePanorama(relative_id(rgb, self.root), str(rgb), files))
        if not out:
            raise UsageError(f"{self.root}: no *_rgb.png panoramas in area_*/pano/rgb")
        return sorted(out, key=lambda p: p.pano_id)

    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        files = panorama.files
        depth = read_image(require(files, "depth"), 1, np.uint16)
        semantic = read_image(require(files, "semantic"), 3, np.uint8).astype(np.int64)
        normals = read_image(require(files, "normals"), 3, np.uint8)
        index = (semantic[..., 0] << 16) | (semantic[..., 1] << 8) | semantic[..., 2]  # base-256 index
        ids = lookup_ids(index, self._label_table)  # #0D0D0D (missing) lies beyond the list: 255
        return PanoramaMaps(
            rgb=read_rgb(files["rgb"]),
            depth=decode_depth(depth, DEPTH_METRES_PER_UNIT, DEPTH_INVALID),
            semantic=ids,
            normals=decode_normals(normals, 127.5, 127.5),
        )
