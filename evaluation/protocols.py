"""Benchmark protocols: named presets that fix the resolution, the depth range, the class list
and the mapping from our ADE20K-150 classes to the benchmark's (`--protocol`).

docs/evaluation.md gives each protocol's sources and what is uncertain.

```python
protocol = get_protocol("stanford2d3d")
config = protocol.metric_config(("depth", "semantic"))  # a MetricConfig for evaluation.metrics
benchmark_ids = protocol.map_classes(ade20k_ids)  # ADE20K-150 ids -> the protocol's, 255 kept
protocol.ignored_classes()  # ADE20K classes without a counterpart (mapped to 255)
```
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import torch
from torch import Tensor

from evaluation.classes import ADE20K_CLASSES, IGNORE_ID, NYU40_CLASSES, STANFORD2D3D_CLASSES
from evaluation.metrics import MetricConfig

MAPPING_COLUMNS = ("ade20k_id", "ade20k_name", "target_id", "target_name", "basis")


@dataclass(frozen=True)
class ClassMapping:
    """One row of a mapping file: an ADE20K-150 class and its counterpart.

    Fields:
        ade20k_id, ade20k_name: the ADE20K-150 class (spherical.ade20k order).
        target_id: the protocol's class id, 255 when there is no counterpart.
        target_name: its name ("" for 255).
        basis: why ("mp3d: <name>", "via NYU40 <class>", "manual: ...", "none: ...").
    """

    ade20k_id: int
    ade20k_name: str
    target_id: int
    target_name: str
    basis: str


def parse_mapping(text: str, class_names: tuple[str, ...], source: str = "mapping") -> tuple[ClassMapping, ...]:
    """The rows of a mapping file's `text` (lines starting with "#" are comments), checked
    against ADE20K-150 and the target's `class_names`.

    Raises:
        ValueError: the text is not a complete, consistent ADE20K-150 mapping (says why).
    """
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if tuple(reader.fieldnames or ()) != MAPPING_COLUMNS:
        raise ValueError(f"{source}: columns must be {MAPPING_COLUMNS}, got {reader.fieldnames}")
    rows = tuple(
        ClassMapping(int(r["ade20k_id"]), r["ade20k_name"], int(r["target_id"]), r["target_name"], r["basis"])
        for r in reader
    )
    if [(r.ade20k_id, r.ade20k_name) for r in rows] != list(enumerate(ADE20K_CLASSES)):
        raise ValueError(f"{source}: rows must be the ADE20K-150 classes in id order")
    names = {**dict(enumerate(class_names)), IGNORE_ID: ""}
    for r in rows:
        if names.get(r.target_id) != r.target_name:
            raise ValueError(f"{source}: {r.ade20k_name} maps to an unknown class {r.target_id} {r.target_name!r}")
    return rows


@cache
def read_mapping(filename: str, class_names: tuple[str, ...]) -> tuple[ClassMapping, ...]:
    """The checked rows (`parse_mapping`) of the package data file `evaluation/data/<filename>`."""
    text = resources.files("evaluation").joinpath("data", filename).read_text(encoding="utf-8")
    return parse_mapping(text, class_names, filename)


@dataclass(frozen=True)
class Protocol:
    """A benchmark's evaluation settings.

    Fields:
        name: the key in PROTOCOLS, as `--protocol` takes it.
        description: one line saying what it scores.
        erp_height: the evaluation height H (maps are H x 2H); None: the ground truth's own.
        depth_min, depth_max: valid ground-truth depth is in (depth_min, depth_max], metres.
        class_names: the benchmark's classes, id order.
        counted_classes: the classes mIoU counts (MetricConfig.counted_classes); None: those
            present in the evaluated ground truth.
        mapping_file: the ADE20K-150 -> class_names table in evaluation/data; None: the
            benchmark uses ADE20K-150 itself.
        sources: where the settings come from.
    """

    name: str
    description: str
    erp_height: int | None
    depth_min: float
    depth_max: float
    class_names: tuple[str, ...]
    counted_classes: tuple[int, ...] | None
    mapping_file: str | None
    sources: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metric_config(self, tasks: tuple[str, ...], align: str = "none") -> MetricConfig:
        """The MetricConfig that scores `tasks` (any of depth, semantic, normals) the way this
        protocol does; `align` for metric depth predictions (none | median | lsq)."""
        return MetricConfig(
            tasks=tuple(tasks),
            num_classes=self.num_classes,
            counted_classes=self.counted_classes,
            depth_min=self.depth_min,
            depth_max=self.depth_max,
            align=align,
        )

    def mapping(self) -> tuple[ClassMapping, ...]:
        """Every ADE20K-150 class with its counterpart (identity when mapping_file is None)."""
        if self.mapping_file is None:
            return tuple(ClassMapping(i, n, i, n, "identity") for i, n in enumerate(ADE20K_CLASSES))
        return read_mapping(self.mapping_file, self.class_names)

    def class_lookup(self, device: torch.device | str | None = None) -> Tensor:
        """(256,) int64 lookup from an ADE20K-150 id (or 255) to this protocol's id (or 255);
        ids 150..254 have no class and map to 255."""
        lookup = torch.full((IGNORE_ID + 1,), IGNORE_ID, dtype=torch.int64)
        lookup[: len(ADE20K_CLASSES)] = torch.tensor([r.target_id for r in self.mapping()])
        return lookup.to(device)

    def map_classes(self, ids: Tensor) -> Tensor:
        """ADE20K-150 class ids (any shape, integer, 255 = none) as this protocol's ids, on the
        ids' device.

        Raises:
            ValueError: an id is neither an ADE20K-150 class nor 255.
        """
        ids = ids.long()
        if bool(((ids < 0) | ((ids >= len(ADE20K_CLASSES)) & (ids != IGNORE_ID))).any()):
            raise ValueError(f"class ids must be ADE20K-150 ids 0..{len(ADE20K_CLASSES) - 1} or {IGNORE_ID}")
        return self.class_lookup(ids.device)[ids]

    def ignored_classes(self) -> list[str]:
        """The ADE20K-150 classes without a counterpart here (mapped to 255), in id order."""
        return [r.ade20k_name for r in self.mapping() if r.target_id == IGNORE_ID]


_SYNTH = Protocol(
    name="synth",
    description="mtpano synth rooms: ADE20K-150, every depth, the ground truth's own resolution",
    erp_height=None,
    depth_min=0.0,
    depth_max=math.inf,
    class_names=ADE20K_CLASSES,
    counted_classes=None,
    mapping_file=None,
    sources=("synthetic/ rooms rendered with exact depth; ADE20K-150 as in spherical/ade20k.py",),
)

_STANFORD2D3D = Protocol(
    name="stanford2d3d",
    description="Stanford2D3D panoramas at 512x1024, depth in (0.001, 10] m, the 13 classes",
    erp_height=512,
    depth_min=0.001,
    depth_max=10.0,
    class_names=STANFORD2D3D_CLASSES,
    counted_classes=tuple(range(len(STANFORD2D3D_CLASSES))),
    mapping_file="ade20k_to_stanford2d3d.csv",
    sources=(
        "512x1024 and the 10 m cap: UniFuse (datasets/stanford2d3d.py: max_depth_meters 10, val_mask "
        "0 < d <= 10) and HoHoNet (test_depth.py --clip 10)",
        "13 classes, all counted: Armeni et al. 2017; HoHoNet test_sem.py",
    ),
)

_MATTERPORT3D = Protocol(
    name="matterport3d",
    description="Matterport3D panoramas at 512x1024, depth in (0, 10] m, NYU40 classes",
    erp_height=512,
    depth_min=0.0,
    depth_max=10.0,
    class_names=NYU40_CLASSES,
    counted_classes=None,
    mapping_file="ade20k_to_nyu40.csv",
    sources=(
        "512x1024 and the 10 m cap: UniFuse (datasets/matterport3d.py: max_depth_meters 10, val_mask 0 < d <= 10)",
        "NYU40: Matterport3D metadata/category_mapping.tsv (nyu40id per object category)",
    ),
)

_STRUCTURED3D = Protocol(
    name="structured3d",
    description="Structured3D panoramas at 512x1024, every depth, NYU40 classes present in the ground truth",
    erp_height=512,
    depth_min=0.0,
    depth_max=math.inf,
    class_names=NYU40_CLASSES,
    counted_classes=None,
    mapping_file="ade20k_to_nyu40.csv",
    sources=(
        "Structured3D (Zheng et al., ECCV 2020) semantic maps are NYU40 ids",
        "classes counted: those present in the evaluated (validation) scenes",
    ),
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (_SYNTH, _STANFORD2D3D, _MATTERPORT3D, _STRUCTURED3D)}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`.

    Raises:
        ValueError: no such protocol (the message names the choices).
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}") from None
