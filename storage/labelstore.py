"""ERP label stores: one Zarr v3 group per store, one shard per panorama per array.

Layout of a store at URL (a local path or any fsspec URL):

    STORE/zarr.json               group; attributes hold the `StoreSpec` and the version
    STORE/<array>/...             arrays indexed by panorama (see `array_specs`)
    STORE/manifest.parquet        one row per panorama: id, index, source, status, error,
                                  per-stage timings and quality figures
    STORE/rows/<index>.json       rows finished since the manifest was last consolidated

One format for three kinds of contents (`StoreSpec.kind`): teacher labels (`mtpano labels`),
imported ground truth (`mtpano import`) and model predictions (`mtpano predict`); the last two
have no patch layout. docs/pipeline.md, "Store kinds".

A panorama is written by exactly one worker: first every shard of it, then its row file.
The row file is the commit: a panorama without one is not done, whatever shards exist,
and is redone (its shards overwritten whole) by the next run. The driver consolidates row
files into `manifest.parquet` (written to a temporary name, then moved) and deletes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from spherical.ade20k import IGNORE_ID
from spherical.erp import erp_width

CONVENTIONS_VERSION = 1
STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.parquet"
MANIFEST_BASE_COLUMNS = ("pano_id", "index", "source", "status", "error")
ROWS = "rows"
STATUS_PENDING, STATUS_OK, STATUS_FAILED = "pending", "ok", "failed"
DEPTH_KINDS = ("metric_range", "relative_disparity")
LABEL_TASKS = ("depth", "semantic", "normals")
# What a store holds: teacher labels (`mtpano labels`), imported ground truth (`mtpano import`)
# or a model's predictions (`mtpano predict`). All three share one format so every tool reads them.
KIND_LABELS, KIND_GROUND_TRUTH, KIND_PREDICTIONS = "labels", "ground_truth", "predictions"
STORE_KINDS = (KIND_LABELS, KIND_GROUND_TRUTH, KIND_PREDICTIONS)
# zstd level of the arrays' Blosc codec: level 1 writes a 512x1024 panorama of all three tasks
# in about half the time of level 5 for 5% more bytes (`make bench-labels`' write stage).
COMPRESSION_LEVEL = 1
# Shards are split into chunks of this side so a reader of a crop does not decode a whole
# panorama. 512 rather than 256: a 1024x2048 panorama of all three tasks writes in 0.09 s
# instead of 0.15 s (Zarr's cost per chunk), and a chunk is still 0.5 MB of float16.
INNER_CHUNK = 512


class StoreError(RuntimeError):
    """A label store cannot be created, opened or written as asked."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds and how it was made; a run may only continue a store whose spec
    equals its own.

    Fields:
        erp_height: label height H (labels are H x 2H).
        tasks: tasks that have label arrays, in ("depth", "semantic", "normals").
        depth_kind: "metric_range" or "relative_disparity" when depth is a task, else None.
        class_names: semantic class names in id order when semantic is a task, else ().
        teachers: per task, the teacher's description (spec, model id, revision, ...).
        layout: patch layout spec (e.g. "icosahedron").
        fov_deg: horizontal FoV of each patch, degrees.
        patch_size: patch side in pixels.
        keep_patches: whether raw teacher patch outputs are stored.
        fusion: fusion settings that change the labels.
        kind: what the store holds, one of STORE_KINDS. Ground-truth and prediction stores
            have no patch layout: layout "", fov_deg (), patch_size 0, teachers {}.
        source: where the contents come from: for ground truth the importer's format, source
            folder, split and mtpano version; for predictions the model and its step.
    """

    erp_height: int
    tasks: tuple[str, ...]
    depth_kind: str | None
    class_names: tuple[str, ...]
    teachers: dict[str, dict[str, Any]]
    layout: str
    fov_deg: tuple[float, ...]
    patch_size: int
    keep_patches: bool = False
    fusion: dict[str, Any] = field(default_factory=dict)
    kind: str = KIND_LABELS
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise StoreError(f"store kind must be one of {STORE_KINDS}, got {self.kind!r}")
        if self.keep_patches and not self.has_layout:
            raise StoreError("keep_patches needs a patch layout")
        unknown = set(self.tasks) - set(LABEL_TASKS)
        if unknown:
            raise StoreError(f"unknown tasks {sorted(unknown)}; tasks are {LABEL_TASKS}")
        if ("depth" in self.tasks) != (self.depth_kind is not None):
            raise StoreError("depth_kind must be given exactly when depth is a task")
        if self.depth_kind is not None and self.depth_kind not in DEPTH_KINDS:
            raise StoreError(f"depth_kind must be one of {DEPTH_KINDS}, got {self.depth_kind!r}")
        if "semantic" in self.tasks and not 0 < len(self.class_names) <= IGNORE_ID:
            raise StoreError(f"semantic labels need 1 to {IGNORE_ID} class names, got {len(self.class_names)}")

    @property
    def erp_width(self) -> int:
        return erp_width(self.erp_height)

    @property
    def num_patches(self) -> int:
        return len(self.fov_deg)

    @property
    def has_layout(self) -> bool:
        """Whether the labels were fused from patches (seams, footprints): labels stores only."""
        return bool(self.layout)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (lists for tuples) that `from_json` reads back."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreSpec:
        return cls(
            erp_height=int(data["erp_height"]),
            tasks=tuple(data["tasks"]),
            depth_kind=data["depth_kind"],
            class_names=tuple(data["class_names"]),
            teachers={k: dict(v) for k, v in data["teachers"].items()},
            layout=str(data["layout"]),
            fov_deg=tuple(float(f) for f in data["fov_deg"]),
            patch_size=int(data["patch_size"]),
            keep_patches=bool(data["keep_patches"]),
            fusion=dict(data.get("fusion", {})),
            # Stores written before kinds existed are label stores.
            kind=str(data.get("kind", KIND_LABELS)),
            source=dict(data.get("source", {})),
        )

    def differences(self, other: StoreSpec) -> list[str]:
        """Names of the fields in which two specs differ."""
        mine, theirs = self.to_json(), other.to_json()
        return [k for k in mine if mine[k] != theirs.get(k)]


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: shape per panorama (without the leading N), dtype, fill."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fill_value: float | int


def array_specs(spec: StoreSpec) -> list[ArraySpec]:
    """The arrays a store of `spec` holds, per panorama.

    - rgb (3,H,W) uint8: the panorama at label resolution.
    - depth (H,W) float16, NaN = no label (range in metres, or aligned inverse range).
    - semantic (H,W) uint8 class ids, 255 = no label.
    - normals (3,H,W) float16 unit world-frame normals, NaN = no label.
    - <task>_confidence (H,W) float16 in [0,1], 0 where there is no label.
    - with keep_patches, per patch P: patches/rgb (P,3,h,w) uint8, patches/rotation (P,3,3)
      float32 world-from-camera, patches/fov_x_deg (P,) float32, and the teachers' raw
      outputs at patch size: patches/depth (P,h,w) float32 (z-depth or disparity, NaN =
      invalid), patches/normals (P,3,h,w) float16 camera frame, patches/semantic (P,h,w)
      uint8 argmax and patches/semantic_confidence (P,h,w) float16 its probability.
    """
    H, W = spec.erp_height, spec.erp_width
    out = [ArraySpec("rgb", (3, H, W), "uint8", 0)]
    if "depth" in spec.tasks:
        out.append(ArraySpec("depth", (H, W), "float16", math.nan))
    if "semantic" in spec.tasks:
        out.append(ArraySpec("semantic", (H, W), "uint8", IGNORE_ID))
    if "normals" in spec.tasks:
        out.append(ArraySpec("normals", (3, H, W), "float16", math.nan))
    out += [ArraySpec(f"{t}_confidence", (H, W), "float16", 0.0) for t in LABEL_TASKS if t in spec.tasks]
    if spec.keep_patches:
        P, s = spec.num_patches, spec.patch_size
        out += [
            ArraySpec("patches/rgb", (P, 3, s, s), "uint8", 0),
            ArraySpec("patches/rotation", (P, 3, 3), "float32", math.nan),
            ArraySpec("patches/fov_x_deg", (P,), "float32", math.nan),
        ]
        if "depth" in spec.tasks:
            out.append(ArraySpec("patches/depth", (P, s, s), "float32", math.nan))
        if "normals" in spec.tasks:
            out.append(ArraySpec("patches/normals", (P, 3, s, s), "float16", math.nan))
        if "semantic" in spec.tasks:
            out.append(ArraySpec("patches/semantic", (P, s, s), "uint8", IGNORE_ID))
            out.append(ArraySpec("patches/semantic_confidence", (P, s, s), "float16", 0.0))
    return out


@dataclass(frozen=True)
class PanoramaEntry:
    """A panorama of the store: its id (path relative to DATA without extension, `/`
    separators), its row index and its source file."""

    pano_id: str
    index: int
    source: str


def _tile(size: int) -> int:
    """Inner chunk side along an axis of `size`: Zarr needs it to divide the shard, so the largest
    divisor of `size` in [INNER_CHUNK/2, INNER_CHUNK] (e.g. 300 for 600), else the whole axis."""
    if size <= INNER_CHUNK:
        return size
    return next((c for c in range(INNER_CHUNK, INNER_CHUNK // 2 - 1, -1) if size % c == 0), size)


def _inner_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape inside a one-panorama shard: the last two axes cut into tiles of about INNER_CHUNK."""
    if len(shape) < 2:
        return (1, *shape)
    return (1, *shape[:-2], _tile(shape[-2]), _tile(shape[-1]))


class LabelStore:
    """A label store (see the module doc). Create with `create`, open with `open`."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self.group = group
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.spec = StoreSpec.from_json(group.attrs["spec"])
        # Array handles for writing, opened once: opening one reads its metadata from the store.
        self._writers: dict[str, zarr.Array] = {}
        # Threads that write a panorama's arrays side by side, made on the first write: zarr's
        # cost per array is mostly Python, which one array's compression (GIL released)
        # overlaps (a 512x1024 panorama of three tasks: 58 ms -> 41 ms on 2 cores).
        self._pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def exists(cls, url: str) -> bool:
        fs, root = fsspec.core.url_to_fs(url)
        return fs.exists(f"{root}/zarr.json")

    @classmethod
    def open(cls, url: str, mode: str = "r") -> LabelStore:
        """Open an existing store read-only ("r") or for writing ("r+")."""
        if not cls.exists(url):
            raise StoreError(f"{url}: not a label store (no zarr.json)")
        group = zarr.open_group(_zarr_location(url), mode=mode, zarr_format=3)
        version = group.attrs.get("store_format_version")
        if version != STORE_FORMAT_VERSION:
            raise StoreError(f"{url}: store format {version}, this mtpano reads {STORE_FORMAT_VERSION}")
        return cls(url, group)

    @classmethod
    def create(cls, url: str, spec: StoreSpec, panoramas: list[PanoramaEntry], attrs: Mapping[str, Any]) -> LabelStore:
        """Create a new store (replacing whatever is at `url`) with pending rows for `panoramas`.

        `attrs` are extra group attributes (mtpano version, creation time, ...).
        """
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            if fs.ls(root) and not _is_label_store(fs, root):
                raise StoreError(f"{url} exists and is not a label store: refusing to replace it")
            fs.rm(root, recursive=True)
        group = zarr.open_group(_zarr_location(url), mode="w", zarr_format=3)
        group.attrs.update(
            {
                **attrs,
                "store_format_version": STORE_FORMAT_VERSION,
                "conventions_version": CONVENTIONS_VERSION,
                "spec": spec.to_json(),
                # The most-read facts, also at top level for any Zarr reader.
                "erp_height": spec.erp_height,
                "erp_width": spec.erp_width,
                "depth_kind": spec.depth_kind,
                "class_names": list(spec.class_names),
                "layout": spec.layout,
                "patch_size": spec.patch_size,
                "kind": spec.kind,
            }
        )
        store = cls(url, group)
        store._create_arrays(len(panoramas))
        store._write_manifest([_pending_row(p) for p in panoramas])
        return store

    def _create_arrays(self, n: int) -> None:
        compressor = BloscCodec(cname="zstd", clevel=COMPRESSION_LEVEL, shuffle="bitshuffle")
        for a in array_specs(self.spec):
            self.group.create_array(
                a.name,
                shape=(n, *a.shape),
                dtype=a.dtype,
                shards=(1, *a.shape),
                chunks=_inner_chunks(a.shape),
                compressors=compressor,
                fill_value=a.fill_value,
            )

    @property
    def num_panoramas(self) -> int:
        return int(self.group["rgb"].shape[0])

    def add_panoramas(self, panoramas: list[PanoramaEntry]) -> None:
        """Append pending rows (indices must continue the store's) and grow every array."""
        n = self.num_panoramas
        if [p.index for p in panoramas] != list(range(n, n + len(panoramas))):
            raise StoreError(f"new panoramas must take indices {n}.. in order")
        for a in array_specs(self.spec):
            self.group[a.name].resize((n + len(panoramas), *a.shape))
        self._writers.clear()  # their shapes are stale
        self._write_manifest(self._manifest_rows() + [_pending_row(p) for p in panoramas])

    # ------------------------------------------------------------------ writing
    def write_panorama(self, index: int, arrays: Mapping[str, np.ndarray], row: Mapping[str, Any]) -> None:
        """Write every array of panorama `index` (whole shards), then its `ok` row (the commit)."""
        self.write_arrays(index, arrays)
        self.commit(index, row)

    def write_arrays(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write every array of panorama `index`, one whole shard each; `commit` must follow.

        `arrays` must hold exactly the store's arrays (see `array_specs`).
        """
        specs = {a.name: a for a in array_specs(self.spec)}
        missing, unexpected = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
        if missing or unexpected:
            raise StoreError(f"panorama {index}: arrays missing {missing}, arrays not in the store {unexpected}")
        for name, value in arrays.items():  # every shape is checked before anything is written
            if value.shape != specs[name].shape:
                raise StoreError(f"{name}: expected shape {specs[name].shape}, got {value.shape}")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(specs), thread_name_prefix="mtpano-store")
        writes = []
        for name, value in arrays.items():
            # Written even when equal to the fill value (an all-black RGB, a task with no
            # label), so that a missing shard always means damage.
            if name not in self._writers:
                self._writers[name] = self.group[name].with_config({"write_empty_chunks": True})
            writes.append(self._pool.submit(_write_shard, self._writers[name], index, value, specs[name].dtype))
        wait(writes)  # every write has ended before an error is raised
        for write in writes:
            write.result()

    def commit(self, index: int, row: Mapping[str, Any]) -> None:
        """Mark panorama `index` done (`ok`) with its row; its arrays must be written."""
        self.write_row(index, {**row, "index": index, "status": STATUS_OK, "error": ""})

    def write_failure(self, index: int, row: Mapping[str, Any], error: str) -> None:
        """Record that panorama `index` failed with a one-line `error`; its arrays keep their fill."""
        self.write_row(index, {**row, "index": index, "status": STATUS_FAILED, "error": error})

    def write_row(self, index: int, row: Mapping[str, Any]) -> None:
        """Write the row file of panorama `index` (to a temporary name first, then moved)."""
        path = f"{self.root}/{ROWS}/{index:08d}.json"
        self.fs.makedirs(f"{self.root}/{ROWS}", exist_ok=True)
        with self.fs.open(path + ".tmp", "w") as f:
            json.dump(jsonable(row), f)
        self.fs.mv(path + ".tmp", path)

    # ------------------------------------------------------------------ manifest
    def _row_files(self) -> dict[int, dict[str, Any]]:
        """Rows written since the last consolidation; unreadable files (a killed write) are skipped."""
        rows: dict[int, dict[str, Any]] = {}
        for path in self.fs.glob(f"{self.root}/{ROWS}/*.json"):
            try:
                with self.fs.open(path) as f:
                    row = json.load(f)
            except (OSError, ValueError):
                continue
            rows[int(row["index"])] = row
        return rows

    def _manifest_rows(self) -> list[dict[str, Any]]:
        with self.fs.open(f"{self.root}/{MANIFEST}", "rb") as f:
            return pq.read_table(f).to_pylist()

    def _write_manifest(self, rows: list[dict[str, Any]]) -> None:
        table = _manifest_table(sorted(rows, key=lambda r: r["index"]))
        path = f"{self.root}/{MANIFEST}"
        with self.fs.open(path + ".tmp", "wb") as f:
            pq.write_table(table, f)
        self.fs.mv(path + ".tmp", path)

    def rows(self) -> list[dict[str, Any]]:
        """Every panorama's current row: the manifest updated by unconsolidated row files."""
        rows = {r["index"]: r for r in self._manifest_rows()}
        for index, row in self._row_files().items():
            rows[index] = {**rows.get(index, {}), **row}
        return [rows[i] for i in sorted(rows)]

    def consolidate(self) -> None:
        """Merge row files into manifest.parquet, then delete them."""
        files = self._row_files()
        if not files:
            return
        self._write_manifest(self.rows())
        for index in files:
            self.fs.rm(f"{self.root}/{ROWS}/{index:08d}.json")

    def manifest(self) -> pa.Table:
        """The manifest as a pyarrow table (row files included)."""
        return _manifest_table(self.rows())

    def entries(self) -> list[PanoramaEntry]:
        return [PanoramaEntry(r["pano_id"], int(r["index"]), r["source"]) for r in self.rows()]

    # ------------------------------------------------------------------ reading
    def read(self, index: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of panorama `index` (all of the store's, or `names`)."""
        names = [a.name for a in array_specs(self.spec)] if names is None else list(names)
        return {name: self.group[name][index] for name in names}


def _write_shard(array: zarr.Array, index: int, value: np.ndarray, dtype: str) -> None:
    """Write panorama `index` of `array` (one whole shard) from `value`, cast to the array's dtype."""
    array[index] = value.astype(dtype, copy=False)


def _zarr_location(url: str) -> str:
    """What to hand zarr for `url`: a plain path for local files (`file://` URLs included), as
    zarr's fsspec store on the local filesystem does not create folders and fails on a new store."""
    fs, root = fsspec.core.url_to_fs(url)
    return root if isinstance(fs, LocalFileSystem) else url


def _is_label_store(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """Whether `root` holds a label store: a Zarr group with our format version, not any Zarr data."""
    try:
        with fs.open(f"{root}/zarr.json") as f:
            return "store_format_version" in json.load(f).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def _pending_row(p: PanoramaEntry) -> dict[str, Any]:
    return {"pano_id": p.pano_id, "index": p.index, "source": p.source, "status": STATUS_PENDING, "error": ""}


def _manifest_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Rows as a table with every column any row has (None where a row lacks it): base columns
    first, then the rest in name order. `pa.Table.from_pylist` would keep only the first row's
    columns, dropping the timings and statistics whenever the first panorama is pending or failed."""
    extra = sorted({k for r in rows for k in r} - set(MANIFEST_BASE_COLUMNS))
    return pa.table({k: [r.get(k) for r in rows] for k in (*MANIFEST_BASE_COLUMNS, *extra)})


def jsonable(value: Any) -> Any:
    """`value` for `json.dumps`: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
