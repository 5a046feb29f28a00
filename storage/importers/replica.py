"""`replica`: the team's reference layout of Replica panoramas (../shared/CONVENTIONS.md).

    <id>_depth.png      uint16 range, metres = value / 4096, 0 and 65535 invalid
    <id>_normals.png    RGB8 normals, n = rgb / 127.5 - 1: our vertical axis (y down), but the
                        scene's heading, another per panorama (fitted to the depth's normals)
    <id>_semantic.png   one RGB colour per segment (not classes: not imported)

storage/groundtruth.py's format for depth and normals. There is no RGB photo: the store's
`rgb` is black and its source says `has_rgb: false`, so such a store serves to score and
compare depth and normals, not to train on. Ids are the file names' `<id>`.
"""

from __future__ import annotations

from storage import groundtruth
from storage.importers.base import (
    IDENTITY_FRAME,
    DatasetReader,
    NormalsFrame,
    PanoramaMaps,
    SourcePanorama,
    UsageError,
    check_erp,
    require,
)

DEPTH_SUFFIX = groundtruth.TASK_SUFFIX["depth"]


class ReplicaReader(DatasetReader):
    name = "replica"
    description = "flat <id>_{depth,normals,semantic}.png (the team's Replica samples; no photos)"
    tasks = ("depth", "normals")
    has_rgb = False
    # ../shared/CONVENTIONS.md says "already in the world frame": true of the vertical axis; the
    # walls show a heading of its own per panorama (docs/datasets.md, tests/test_import.py).
    normals_frame = NormalsFrame(
        IDENTITY_FRAME.matrix, fit_yaw=True, note="y down as ours; heading per panorama fitted to the depth's normals"
    )

    def find(self, split: str | None) -> list[SourcePanorama]:
        depths = sorted(p for p in self.root.iterdir() if p.is_file() and p.name.endswith(DEPTH_SUFFIX))
        if not depths:
            raise UsageError(f"{self.root}: no <id>{DEPTH_SUFFIX} files (not the Replica layout)")
        out = []
        for depth in depths:
            pano_id = depth.name[: -len(DEPTH_SUFFIX)]
            files = {"depth": depth, "normals": self.root / f"{pano_id}{groundtruth.TASK_SUFFIX['normals']}"}
            out.append(SourcePanorama(pano_id, str(depth), files))
        return out

    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        depth, normals = require(panorama.files, "depth"), require(panorama.files, "normals")
        return PanoramaMaps(
            depth=check_erp(depth, groundtruth.read_depth(depth)),
            normals=check_erp(normals, groundtruth.read_normals(normals), channels_first=True),
        )
