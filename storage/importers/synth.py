"""`synth`: a folder written by `mtpano synth` (synthetic/dataset.py).

    images/room_<seed>.png            RGB panorama, 8-bit
    gt/room_<seed>_depth.png          uint16 range, metres = value / 4096, 0 and 65535 invalid
    gt/room_<seed>_normals.png        RGB8 world-frame normals (ours), n = rgb / 127.5 - 1, black invalid
    gt/room_<seed>_semantic.png       uint8 ADE20K-150 ids, 255 = no label

(storage/groundtruth.py's format). Ids are the image paths relative to images/, as
`mtpano labels SRC/images` gives them.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.images import find_panoramas
from spherical.ade20k import ADE20K_CLASSES
from storage import groundtruth
from storage.importers.base import (
    DatasetReader,
    PanoramaMaps,
    SourcePanorama,
    UsageError,
    check_erp,
    read_rgb,
    require,
)


class SynthReader(DatasetReader):
    name = "synth"
    description = "a `mtpano synth` folder: images/ and gt/ (exact ground truth, ADE20K-150)"
    tasks = ("depth", "semantic", "normals")

    def class_names(self) -> tuple[str, ...]:
        return ADE20K_CLASSES

    def find(self, split: str | None) -> list[SourcePanorama]:
        images = self.root / "images"
        if not images.is_dir() or not (self.root / "gt").is_dir():
            raise UsageError(f"{self.root}: not a `mtpano synth` folder (expected images/ and gt/ in it)")
        try:
            found = find_panoramas(str(images))
        except (OSError, ValueError) as err:
            raise UsageError(str(err)) from None
        out = []
        for pano_id, source in found:
            gt = {task: self.root / "gt" / f"{pano_id}{suffix}" for task, suffix in groundtruth.TASK_SUFFIX.items()}
            out.append(SourcePanorama(pano_id, source, {"rgb": Path(source), **gt}))
        return out

    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        files = panorama.files
        depth, normals, semantic = (require(files, m) for m in ("depth", "normals", "semantic"))
        return PanoramaMaps(
            rgb=read_rgb(files["rgb"]),
            depth=check_erp(depth, groundtruth.read_depth(depth)),
            semantic=check_erp(semantic, groundtruth.read_semantic(semantic)),
            normals=check_erp(normals, groundtruth.read_normals(normals), channels_first=True),
        )
