"""Class lists of the benchmarks' label spaces, ids 0-based, 255 = no label.

- ADE20K-150: `spherical.ade20k.ADE20K_CLASSES`, the project's own label space.
- NYU40 (Gupta et al., "Perceptual organization and recognition of indoor scenes from RGB-D
  images", CVPR 2013; used by Structured3D and by Matterport3D's `category_mapping.tsv`):
  id = NYU40 id - 1, so 0 wall .. 39 otherprop (NYU40's 0, unlabelled, becomes 255). Names as
  in Matterport3D's `metadata/category_mapping.tsv` (`nyu40class`), with its "refridgerator"
  spelled "refrigerator".
- Stanford2D3D-13 (Armeni et al., "Joint 2D-3D-semantic data for indoor scene
  understanding", 2017): the 13 classes in alphabetical order, the order of HoHoNet's
  `S2d3dSemDataset.ID2CLASS` (github.com/sunset1995/HoHoNet, whose labels are these ids + 1
  with 0 unknown).
"""

from __future__ import annotations

from spherical.ade20k import ADE20K_CLASSES, IGNORE_ID

NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

STANFORD2D3D_CLASSES: tuple[str, ...] = (
    "beam", "board", "bookcase", "ceiling", "chair", "clutter", "column", "door", "floor", "sofa",
    "table", "wall", "window",
)  # fmt: skip

__all__ = ["ADE20K_CLASSES", "IGNORE_ID", "NYU40_CLASSES", "STANFORD2D3D_CLASSES"]

assert len(NYU40_CLASSES) == 40 and len(STANFORD2D3D_CLASSES) == 13
