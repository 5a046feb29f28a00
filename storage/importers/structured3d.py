"""`structured3d`: the panoramas of Structured3D (Zheng et al. 2020), full furniture, raw light.

Layout (data_organization.md, github.com/bertjiazheng/Structured3D):

    scene_<5 digits>/2D_rendering/<room>/panorama/full/rgb_rawlight.png
    .../full/depth.png       uint16 millimetres, 0 = no reading
    .../full/semantic.png    8-bit NYU40 ids (1..40), 0 = no label
    .../full/normal.png      RGB8 = 128 (1 + n)

Ids are the RGB paths relative to SRC without extension. docs/datasets.md lists the sources
of every fact and what is unconfirmed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from evaluation.classes import NYU40_CLASSES
from spherical.ade20k import IGNORE_ID
from storage.importers.base import (
    Z_UP_FRAME_MATRIX,
    DatasetError,
    DatasetReader,
    NormalsFrame,
    PanoramaMaps,
    SourcePanorama,
    UsageError,
    check_erp,
    decode_depth,
    decode_normals,
    read_image,
    read_rgb,
    relative_id,
    require,
)

DEPTH_METRES_PER_UNIT = 1e-3  # "The units are millimeters, a value of 1000 is a meter."
DEPTH_INVALID = (0,)  # "A zero value denotes no reading."
NORMAL_CENTRE = NORMAL_SCALE = 128.0  # "128 * (1 + n)"
PANORAMA = Path("panorama") / "full"  # furniture: empty | simple | full
RGB_FILE = "rgb_rawlight.png"  # lighting: cold | raw | warm
_SCENE = re.compile(r"scene_(\d+)$")


def read_class_ids(path: Path) -> np.ndarray:
    """(h,w) uint8 values of a single-channel 8-bit PNG, palette PNGs included (their indices,
    not their colours: OpenCV would decode a palette into colours).

    Raises:
        DatasetError: unreadable, or not a single-channel 8-bit image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot decode the image ({str(err).splitlines()[0]})") from None
    if mode not in ("L", "P") or values.ndim != 2:
        raise DatasetError(f"{path}: expected 8-bit class ids (one channel), got an image of mode {mode}")
    return check_erp(path, values.astype(np.uint8))


class Structured3DReader(DatasetReader):
    name = "structured3d"
    description = "Structured3D: scene_*/2D_rendering/*/panorama/full/{rgb_rawlight,depth,semantic,normal}.png"
    tasks = ("depth", "semantic", "normals")
    has_split_file = True
    normals_frame = NormalsFrame(
        Z_UP_FRAME_MATRIX,
        fit_yaw=True,
        yaw_step_deg=90.0,
        note="world frame, z up, axis-aligned; heading fitted to the depth's normals in steps of 90 degrees",
    )

    def class_names(self) -> tuple[str, ...]:
        return NYU40_CLASSES

    def _in_split(self, scene: str, split: str) -> bool:
        number = int(_SCENE.match(scene).group(1))
        return any(lo <= number <= hi for lo, hi in self.split_table[split])

    def find(self, split: str | None) -> list[SourcePanorama]:
        scenes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and _SCENE.match(p.name))
        if not scenes:
            raise UsageError(f"{self.root}: no scene_<number> folders (not the Structured3D layout)")
        if split is not None:
            scenes = [s for s in scenes if self._in_split(s, split)]
            if not scenes:
                raise UsageError(f"{self.root}: no scene of split {split}")
        out = []
        for scene in scenes:
            for room in sorted((self.root / scene / "2D_rendering").glob("*")):
                folder = room / PANORAMA
                rgb = folder / RGB_FILE
                if not rgb.is_file():
                    continue
                files = {
                    "rgb": rgb,
                    "depth": folder / "depth.png",
                    "semantic": folder / "semantic.png",
                    "normals": folder / "normal.png",
                }
                out.append(SourcePanorama(relative_id(rgb, self.root), str(rgb), files))
        if not out:
            raise UsageError(f"{self.root}: no 2D_rendering/*/{PANORAMA.as_posix()}/{RGB_FILE} in its scenes")
        return sorted(out, key=lambda p: p.pano_id)

    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        files = panorama.files
        depth = read_image(require(files, "depth"), 1, np.uint16)
        nyu40 = read_class_ids(require(files, "semantic"))
        normals = read_image(require(files, "normals"), 3, np.uint8)
        if nyu40.max() > len(NYU40_CLASSES):
            raise DatasetError(f"{files['semantic']}: ids up to {nyu40.max()}, NYU40 has 1..{len(NYU40_CLASSES)}")
        ids = np.where(nyu40 == 0, IGNORE_ID, nyu40.astype(np.int64) - 1).astype(np.uint8)  # NYU40 0 = no label
        return PanoramaMaps(
            rgb=read_rgb(files["rgb"]),
            depth=decode_depth(depth, DEPTH_METRES_PER_UNIT, DEPTH_INVALID),
            semantic=ids,
            normals=decode_normals(normals, NORMAL_CENTRE, NORMAL_SCALE),
        )
