"""`matterport3d`: Matterport3D as the 360° depth benchmarks distribute it (UniFuse, OmniFusion).

Layout: the output of UniFuse's stitching scripts (github.com/alibaba/UniFuse-Unidirectional-Fusion,
UniFuse/Matterport3D/stitch.m), which UniFuse's and OmniFusion's loaders and panorama lists use:

    <scene>/pano_skybox_color/<panorama>.jpg   RGB, 1024 x 2048, stitched from the skybox images
    <scene>/pano_depth/<panorama>.png          uint16, metres = value / 4000, 0 = no depth

Depth only (the benchmarks ship no other ground truth). Ids are the RGB paths relative to
SRC without extension. docs/datasets.md lists the sources and what is unconfirmed.
"""

from __future__ import annotations

import numpy as np

from storage.importers.base import (
    DatasetReader,
    PanoramaMaps,
    SourcePanorama,
    UsageError,
    decode_depth,
    read_image,
    read_rgb,
    relative_id,
    require,
)

DEPTH_METRES_PER_UNIT = 1.0 / 4000.0  # stitch.m writes uint16(depth * 4000); the loaders divide by 4000
DEPTH_INVALID = (0,)  # Matterport's depth images mark no depth with 0, kept by the stitching
RGB_FOLDER, DEPTH_FOLDER = "pano_skybox_color", "pano_depth"


class Matterport3DReader(DatasetReader):
    name = "matterport3d"
    description = "Matterport3D as UniFuse stitches it: <scene>/pano_skybox_color/*.jpg, <scene>/pano_depth/*.png"
    tasks = ("depth",)
    has_split_file = True

    def find(self, split: str | None) -> list[SourcePanorama]:
        scenes = sorted(p.name for p in self.root.iterdir() if (p / RGB_FOLDER).is_dir())
        if not scenes:
            raise UsageError(f"{self.root}: no <scene>/{RGB_FOLDER} folders (not the 360° Matterport3D layout)")
        if split is not None:
            wanted = set(self.split_table[split])
            scenes = [s for s in scenes if s in wanted]
            if not scenes:
                raise UsageError(f"{self.root}: none of the {len(wanted)} scenes of split {split}")
        out = []
        for scene in scenes:
            for rgb in sorted((self.root / scene / RGB_FOLDER).glob("*.jpg")):
                files = {"rgb": rgb, "depth": self.root / scene / DEPTH_FOLDER / f"{rgb.stem}.png"}
                out.append(SourcePanorama(relative_id(rgb, self.root), str(rgb), files))
        if not out:
            raise UsageError(f"{self.root}: no .jpg panoramas in <scene>/{RGB_FOLDER}")
        return sorted(out, key=lambda p: p.pano_id)

    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        depth = read_image(require(panorama.files, "depth"), 1, np.uint16)
        return PanoramaMaps(
            rgb=read_rgb(panorama.files["rgb"]),
            depth=decode_depth(depth, DEPTH_METRES_PER_UNIT, DEPTH_INVALID),
        )
