"""`mtpano import`: one generic writer of ground-truth stores for every dataset reader.

`import_dataset(src, out, config)` finds the panoramas with the format's reader, creates (or
continues) a store of kind "ground_truth" in the label-store format, and writes each
panorama: its maps resampled to the store's H x 2H with the ground-truth rules of
`pipeline.quality.resample_to_labels` (nearest for classes, area average over the valid
pixels for depth and normals, normals renormalised), normals turned into our world frame
(`storage.importers.frames`), confidence 1 where a label exists and 0 elsewhere, and an `ok`
row with the figures the arrays determine (coverage, confidence, class histogram).

Like `mtpano labels`: a rerun skips the panoramas whose row is `ok`; a bad file fails its
panorama with a one-line reason and the rest go on; a store made from another source,
format, split or height is refused unless `overwrite`. Usage errors raise `UsageError`
before anything is written.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.images import resize_erp
from pipeline.quality import array_figures, label_mask
from spherical.ade20k import IGNORE_ID
from storage.groundtruth import resample_to_labels
from storage.importers.base import DatasetError, DatasetReader, PanoramaMaps, SourcePanorama, UsageError
from storage.importers.frames import to_world_frame
from storage.labelstore import (
    KIND_GROUND_TRUTH,
    STATUS_FAILED,
    STATUS_OK,
    LabelStore,
    PanoramaEntry,
    StoreError,
    StoreSpec,
    array_specs,
)

CONSOLIDATE_EVERY_S = 30.0  # merge row files into the manifest this often during a long import
# A panorama whose converted normals disagree with the normals of its own depth by more than
# this (median over wall-like pixels) fails: the format's frame convention does not fit its files.
NORMALS_MAX_MEDIAN_DEG = 30.0
MIN_HEIGHT = 16  # the smallest store height (as `mtpano labels`)


@dataclass(frozen=True)
class ImportConfig:
    """What `mtpano import` is asked to do."""

    format: str  # reader name, a key of storage.importers.FORMATS
    split: str | None = None  # one of the format's standard splits; None = every panorama
    height: int | None = None  # store height H (labels H x 2H); None = the dataset's native height
    overwrite: bool = False  # replace a store made from another source, format, split or height


@dataclass
class ImportSummary:
    """What an import did. `failed` lists (pano_id, error) of every failed panorama of the source."""

    store: str
    total: int
    done_before: int
    height: int
    imported: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    normals_depth_walls_deg: float | None = None  # median over the source's ok rows

    @property
    def exit_code(self) -> int:
        return 3 if self.failed else 0


ResultCallback = Callable[[dict[str, Any]], None]


def make_reader(format_name: str, src: Path) -> DatasetReader:
    """The reader of `format_name` for the folder `src`.

    Raises:
        UsageError: unknown format, or `src` is not a folder.
    """
    from storage.importers import FORMATS

    if format_name not in FORMATS:
        raise UsageError(f"unknown format {format_name!r}; formats: {', '.join(FORMATS)}")
    if not Path(src).is_dir():
        raise UsageError(f"{src}: no such folder")
    return FORMATS[format_name](Path(src))


def import_dataset(
    src: str | Path,
    out: str,
    config: ImportConfig,
    on_start: Callable[[int, int], None] | None = None,
    on_result: ResultCallback | None = None,
) -> ImportSummary:
    """Import the ground truth of the dataset folder `src` into the store at `out`.

    Args:
        src: the dataset folder, in the layout of `config.format`.
        out: the store's path or fsspec URL.
        on_start: called with (panoramas to import, panoramas already done).
        on_result: called with each panorama's result (index, pano_id, status, error).
    Raises:
        UsageError: bad format, source, split, height or store (nothing was written).
    """
    reader = make_reader(config.format, Path(src))
    if config.split is not None and config.split not in reader.splits:
        known = f"its splits: {', '.join(reader.splits)}" if reader.splits else "it has no standard splits"
        raise UsageError(f"format {reader.name} has no split {config.split!r}; {known}")
    if config.height is not None and config.height < MIN_HEIGHT:
        raise UsageError(f"--height must be at least {MIN_HEIGHT}, got {config.height}")
    panoramas = reader.find(config.split)
    class_names = reader.class_names() if "semantic" in reader.tasks else ()
    cached: dict[str, tuple[PanoramaMaps, float]] = {}  # the probed panorama: (maps, seconds to read)
    height = config.height
    if height is None:
        probed, maps, seconds = _probe(reader, panoramas)
        cached[probed] = (maps, seconds)
        height = _native_height(maps)
    spec = store_spec(reader, config.split, height, class_names)
    store = _prepare_store(out, spec, panoramas, config.overwrite)

    by_id = {p.pano_id: p for p in panoramas}
    rows = [r for r in store.rows() if r["pano_id"] in by_id]
    todo = [r for r in rows if r["status"] != STATUS_OK]
    summary = ImportSummary(store=out, total=len(rows), done_before=len(rows) - len(todo), height=height)
    if on_start is not None:
        on_start(len(todo), summary.done_before)
    started = last = time.perf_counter()
    try:
        for row in todo:
            result = _import_one(store, reader, by_id[row["pano_id"]], int(row["index"]), cached)
            summary.imported += 1
            if on_result is not None:
                on_result(result)
            if time.perf_counter() - last > CONSOLIDATE_EVERY_S:
                store.consolidate()
                last = time.perf_counter()
    finally:
        store.consolidate()
    summary.seconds = time.perf_counter() - started
    final = [r for r in store.rows() if r["pano_id"] in by_id]
    summary.failed = [(r["pano_id"], r["error"]) for r in final if r["status"] == STATUS_FAILED]
    angles = [r.get("normals_depth_walls_deg") for r in final if r["status"] == STATUS_OK]
    angles = [float(a) for a in angles if a is not None and np.isfinite(a)]
    summary.normals_depth_walls_deg = float(np.median(angles)) if angles else None
    return summary


def store_spec(reader: DatasetReader, split: str | None, height: int, class_names: tuple[str, ...]) -> StoreSpec:
    """The spec of a ground-truth store of `reader`'s dataset: no patch layout, no teachers."""
    from mtpano import __version__

    return StoreSpec(
        erp_height=height,
        tasks=reader.tasks,
        depth_kind="metric_range" if "depth" in reader.tasks else None,
        class_names=tuple(class_names),
        teachers={},
        layout="",
        fov_deg=(),
        patch_size=0,
        kind=KIND_GROUND_TRUTH,
        source={
            "importer": "mtpano import",
            "format": reader.name,
            "path": str(reader.root.resolve()),
            "split": split,
            "has_rgb": reader.has_rgb,
            "normals_frame": reader.normals_frame.note if "normals" in reader.tasks else None,
            "mtpano_version": __version__,
        },
    )


def _same_origin(spec: StoreSpec) -> StoreSpec:
    """`spec` without what may change between runs of the same import (the mtpano version)."""
    return replace(spec, source={k: v for k, v in spec.source.items() if k != "mtpano_version"})


def _prepare_store(url: str, spec: StoreSpec, panoramas: list[SourcePanorama], overwrite: bool) -> LabelStore:
    """Continue the store at `url` when it was made by the same import, else create it (an
    existing store of another origin only with `overwrite`)."""
    if LabelStore.exists(url):
        try:
            store = LabelStore.open(url, mode="r+")
        except StoreError as err:
            raise UsageError(str(err)) from None
        differences = _same_origin(store.spec).differences(_same_origin(spec))
        if not differences:
            known = {e.pano_id for e in store.entries()}
            start = store.num_panoramas
            new = [p for p in panoramas if p.pano_id not in known]
            if new:
                store.add_panoramas([PanoramaEntry(p.pano_id, start + i, p.source) for i, p in enumerate(new)])
            return store
        if not overwrite:
            origin = store.spec.source
            made = f"{store.spec.kind} from {origin.get('format', '?')} {origin.get('path', '')}".strip()
            raise UsageError(
                f"{url} holds a store made otherwise ({made}; {', '.join(differences)} differ); "
                "pass --overwrite to replace it, or choose another --out"
            )
    entries = [PanoramaEntry(p.pano_id, i, p.source) for i, p in enumerate(panoramas)]
    try:
        return LabelStore.create(
            url,
            spec,
            entries,
            {
                "mtpano_version": spec.source["mtpano_version"],
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
    except StoreError as err:
        raise UsageError(str(err)) from None


def _probe(reader: DatasetReader, panoramas: list[SourcePanorama]) -> tuple[str, PanoramaMaps, float]:
    """(id, maps, seconds to read) of the first panorama that reads: its size is the dataset's native one.

    Raises:
        UsageError: no panorama reads (the first one's error is given).
    """
    first_error = None
    for panorama in panoramas:
        started = time.perf_counter()
        try:
            return panorama.pano_id, reader.read(panorama), time.perf_counter() - started
        except (OSError, ValueError) as err:
            first_error = first_error or f"{panorama.pano_id}: {_one_line(err)}"
    raise UsageError(f"no panorama of {reader.root} can be read ({first_error})")


def _native_height(maps: PanoramaMaps) -> int:
    """The height of a panorama's photo, else of its first ground-truth map."""
    for value in (maps.rgb, maps.depth, maps.semantic):
        if value is not None:
            return int(value.shape[0])
    assert maps.normals is not None, "a reader returned no map at all"
    return int(maps.normals.shape[1])


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _import_one(
    store: LabelStore,
    reader: DatasetReader,
    panorama: SourcePanorama,
    index: int,
    cached: dict[str, tuple[PanoramaMaps, float]],
) -> dict[str, Any]:
    """Read, convert and write one panorama (or record its failure); returns its result row."""
    row: dict[str, Any] = {"pano_id": panorama.pano_id, "source": panorama.source, "worker": socket.gethostname()}
    started = time.perf_counter()
    try:
        if panorama.pano_id in cached:
            maps, seconds = cached.pop(panorama.pano_id)
            started -= seconds
        else:
            maps = reader.read(panorama)
        read = time.perf_counter()
        arrays, figures = convert(maps, store.spec, reader)
        converted = time.perf_counter()
        store.write_arrays(index, arrays)
        row.update(figures)
        row.update(maps.extra)
        row.update(t_read=read - started, t_convert=converted - read, t_write=time.perf_counter() - converted)
        row["finished_at"] = time.time()
        store.commit(index, row)
        return {**row, "index": index, "status": STATUS_OK, "error": ""}
    except (OSError, ValueError) as err:
        error = _one_line(err)
        row["finished_at"] = time.time()
        store.write_failure(index, row, error)
        return {**row, "index": index, "status": STATUS_FAILED, "error": error}


def convert(maps: PanoramaMaps, spec: StoreSpec, reader: DatasetReader) -> tuple[dict[str, np.ndarray], dict]:
    """One panorama's maps -> the store's arrays (see `array_specs`) and its row figures.

    Raises:
        DatasetError: a map the store needs is missing, or class ids beyond the class list.
    """
    H = spec.erp_height
    arrays: dict[str, np.ndarray] = {}
    if maps.rgb is not None:
        rgb = np.clip(np.round(resize_erp(maps.rgb, H) * 255.0), 0, 255).astype(np.uint8)  # (H,W,3)
        arrays["rgb"] = rgb.transpose(2, 0, 1)  # (H,W,3) -> (3,H,W)
    else:
        arrays["rgb"] = np.zeros((3, H, spec.erp_width), np.uint8)  # a dataset without photos
    labels: dict[str, np.ndarray] = {}
    for task in spec.tasks:
        value = getattr(maps, task)
        if value is None:
            raise DatasetError(f"the reader gave no {task} map")
        labels[task] = resample_to_labels(task, value, H)
    figures: dict[str, Any] = {}
    if "depth" in labels:
        depth = labels["depth"].astype(np.float32)
        labels["depth"] = np.where(depth > 0, depth, np.nan).astype(np.float32)
    if "semantic" in labels:
        ids = labels["semantic"]
        beyond = (ids != IGNORE_ID) & (ids >= len(spec.class_names))
        if beyond.any():
            raise DatasetError(
                f"class ids {sorted(set(ids[beyond].tolist()))[:5]} beyond the {len(spec.class_names)} classes"
            )
    if "normals" in labels:
        labels["normals"], figures = to_world_frame(labels["normals"], labels.get("depth"), reader.normals_frame)
        angle = figures.get("normals_depth_walls_deg")
        if angle is not None and angle > NORMALS_MAX_MEDIAN_DEG:
            raise DatasetError(
                f"its normals disagree with the normals of its depth by a median {angle:.0f}° on walls (over "
                f"{NORMALS_MAX_MEDIAN_DEG:.0f}°): the {reader.name} normals frame does not fit these files"
            )
    dtypes = {a.name: a.dtype for a in array_specs(spec)}
    for task, value in labels.items():
        arrays[task] = value.astype(dtypes[task])
    for task in spec.tasks:
        arrays[f"{task}_confidence"] = label_mask(task, arrays).astype(np.float16)
    figures.update(array_figures(spec, arrays, None))
    return arrays, figures
