"""What every dataset reader of `mtpano import` provides, and the decoding helpers they share.

A reader knows one public layout: it finds the panoramas of a source folder (of one split),
and reads one panorama into our conventions (docs/conventions.md): RGB in [0, 1], depth as
range in metres, class ids of the reader's class list with 255 = no label, unit normals.
Normals come in the dataset's own frame; the reader declares the frame (`NormalsFrame`) and
the writer (`storage.importers.writer`) turns them into ours after resampling, so that a
frame that is only known up to a yaw can be fitted once, at the store's resolution.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from pipeline.images import ImageError, read_panorama
from spherical.ade20k import IGNORE_ID


class DatasetError(ValueError):
    """A dataset file cannot be read or holds values its format does not allow (one line)."""


class UsageError(Exception):
    """`mtpano import` cannot start as asked (bad source, format, split or store): exit code 2."""


@dataclass(frozen=True)
class NormalsFrame:
    """How a dataset's normal vectors map into our world frame (x right, y down, z forward).

    Fields:
        matrix: (3,3) our-from-dataset matrix: n_ours = matrix @ n_dataset (up to the yaw
            below when `fit_yaw`).
        fit_yaw: the heading of the dataset's horizontal axes is unknown (a building's global
            frame with another heading per panorama) or unconfirmed: the rotation about the
            vertical axis is fitted per panorama to the normals of its own depth.
        yaw_step_deg: with `fit_yaw`, snap the fitted yaw to a multiple of this (90 for a
            frame known to be axis-aligned with the panorama up to the signs and order of its
            horizontal axes); None keeps the fitted value.
        note: one line for docs and the store's source: where the convention comes from.
    """

    matrix: tuple[tuple[float, float, float], ...]
    fit_yaw: bool = False
    yaw_step_deg: float | None = None
    note: str = ""

    def as_array(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)


IDENTITY_FRAME = NormalsFrame(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), note="already our world frame")
# A z-up frame whose +y looks at the panorama's centre column: ours = (x, -z, y).
Z_UP_FRAME_MATRIX = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


@dataclass(frozen=True)
class SourcePanorama:
    """One panorama of a dataset: its store id, its main file and its files per modality.

    Fields:
        pano_id: the id `mtpano labels` gives its RGB file (path relative to the images folder
            without extension, `/` separators).
        source: the file recorded in the manifest's `source` column (the RGB file, else the
            first ground-truth file).
        files: per modality ("rgb", "depth", "semantic", "normals"), its path.
    """

    pano_id: str
    source: str
    files: dict[str, Path]


@dataclass
class PanoramaMaps:
    """One panorama read from its files, each map at the file's own resolution (W = 2H).

    Fields:
        rgb: (h,w,3) float32 RGB in [0,1], or None for a dataset without photos.
        depth: (h,w) float32 range in metres, NaN = no value.
        semantic: (h,w) uint8 ids of the reader's class list, 255 = no label.
        normals: (3,h,w) float32 unit normals in the reader's `normals_frame`, NaN = no value.
        extra: figures for the panorama's manifest row (e.g. how many ids had no class).
    """

    rgb: np.ndarray | None = None
    depth: np.ndarray | None = None
    semantic: np.ndarray | None = None
    normals: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class DatasetReader(ABC):
    """One dataset layout. Subclasses set the class attributes and implement `find` and `read`."""

    name: ClassVar[str]  # the --format value
    description: ClassVar[str]  # one line for --help and errors
    tasks: ClassVar[tuple[str, ...]]  # label tasks the format provides, in ("depth", "semantic", "normals")
    has_rgb: ClassVar[bool] = True  # whether the format ships photos
    normals_frame: ClassVar[NormalsFrame] = IDENTITY_FRAME
    has_split_file: ClassVar[bool] = False  # whether splits/<name>.json ships its standard splits

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def splits(self) -> tuple[str, ...]:
        """The --split names this format knows (its standard splits), none by default."""
        return tuple(self.split_table) if self.has_split_file else ()

    @cached_property
    def split_table(self) -> dict[str, Any]:
        """The split file's splits: name -> what each reader's `find` selects by."""
        assert self.has_split_file, f"{self.name} ships no split file"
        return split_file(self.name)["splits"]

    def class_names(self) -> tuple[str, ...]:
        """Class names in id order when semantic is a task (may read files in the source).

        Raises:
            UsageError: the class list cannot be built (a missing label file).
        """
        return ()

    @abstractmethod
    def find(self, split: str | None) -> list[SourcePanorama]:
        """The panoramas of the source folder (of `split`, a name in `splits`), sorted by id.

        Raises:
            UsageError: the folder does not hold this layout, or no panorama of the split.
        """

    @abstractmethod
    def read(self, panorama: SourcePanorama) -> PanoramaMaps:
        """Read one panorama into our conventions (see `PanoramaMaps`).

        Raises:
            DatasetError / OSError: a missing, unreadable or invalid file (the panorama fails).
        """


# ---------------------------------------------------------------------- split files
def split_file(format_name: str) -> dict[str, Any]:
    """The split data file `splits/<format>.json` shipped with the importers (its `source`
    says where the split comes from)."""
    text = resources.files("storage.importers").joinpath("splits", f"{format_name}.json").read_text()
    return json.loads(text)


# ---------------------------------------------------------------------- decoding
def relative_id(path: Path, root: Path) -> str:
    """A panorama id: `path` relative to `root` without its extension, `/` separators (the
    rule of `pipeline.images.find_panoramas`)."""
    return path.relative_to(root).with_suffix("").as_posix()


def require(files: dict[str, Path], modality: str) -> Path:
    """The file of `modality`, or a DatasetError naming it when it is missing."""
    path = files[modality]
    if not path.is_file():
        raise DatasetError(f"missing {modality} file {path}")
    return path


def read_rgb(path: Path) -> np.ndarray:
    """(h,w,3) float32 RGB in [0,1] of a panorama photo (any format `mtpano labels` reads)."""
    try:
        return read_panorama(str(path))
    except ImageError as err:
        raise DatasetError(f"{path}: {err}") from None


def read_image(path: Path, channels: int, dtype: type) -> np.ndarray:
    """A PNG with exactly `channels` channels (1: (h,w), 3: (h,w,3) in RGB order) of `dtype`.

    Raises:
        DatasetError: unreadable, or another channel count or sample type.
    """
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{path}: cannot decode the image (empty, corrupt or not an image)")
    have = 1 if image.ndim == 2 else image.shape[2]
    if have != channels or image.dtype != dtype:
        raise DatasetError(
            f"{path}: expected a {channels}-channel {np.dtype(dtype).name} image, "
            f"got {have} channel(s) of {image.dtype}"
        )
    if channels == 3:
        image = image[..., ::-1]  # BGR -> RGB
    return check_erp(path, image)


def check_erp(path: Path, image: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """`image` ((h,w), (h,w,C), or (C,h,w) when `channels_first`) if it is a 2:1 panorama,
    else a DatasetError."""
    h, w = image.shape[-2:] if channels_first else image.shape[:2]
    if w != 2 * h:
        raise DatasetError(f"{path}: not a 2:1 equirectangular panorama ({w}x{h})")
    return np.ascontiguousarray(image)


def decode_depth(raw: np.ndarray, metres_per_unit: float, invalid: tuple[int, ...]) -> np.ndarray:
    """(h,w) integer depth -> (h,w) float32 metres, NaN where the value is in `invalid`."""
    valid = ~np.isin(raw, invalid)
    return np.where(valid, raw.astype(np.float32) * np.float32(metres_per_unit), np.nan).astype(np.float32)


def decode_normals(rgb: np.ndarray, centre: float, scale: float) -> np.ndarray:
    """(h,w,3) uint8 encoded normals -> (3,h,w) float32 unit vectors, n = (rgb - centre) / scale.

    Pixels whose decoded vector is far from unit length (|n| outside [0.5, 1.5]: the datasets'
    "no value" colours, mid-grey or black) become NaN; the rest are renormalised.
    """
    n = (rgb.astype(np.float32).transpose(2, 0, 1) - np.float32(centre)) / np.float32(scale)  # (h,w,3) -> (3,h,w)
    norm = np.linalg.norm(n, axis=0, keepdims=True)
    valid = (norm > 0.5) & (norm < 1.5)
    return np.where(valid, n / np.maximum(norm, 1e-6), np.nan).astype(np.float32)


def lookup_ids(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map integer `codes` through `table` (code -> class id or 255); codes outside it are 255."""
    inside = (codes >= 0) & (codes < len(table))
    return np.where(inside, table[np.clip(codes, 0, len(table) - 1)], IGNORE_ID).astype(np.uint8)
