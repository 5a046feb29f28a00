"""Integrity checks of a label store (`mtpano verify`).

What is checked, each problem reported with the panorama it concerns:

- the store: it opens, its manifest reads, every array of its spec exists with the spec's
  dtype and per-panorama shape, and all arrays hold the same number of panoramas;
- the manifest: one row per array index, unique ids and indices, known statuses, no row
  pointing past the end of the arrays;
- every `ok` row: each array's shard file exists (Zarr reads a missing shard as its fill
  value, so a deleted shard would otherwise pass as "no label"), and its arrays read;
- the values of every `ok` row: depth finite and positive where labelled; normals unit
  length (float16 tolerance) with all three components or none; class ids below the number
  of class names or 255; confidences finite and in [0, 1]; no missing label (NaN, 255)
  where the confidence is above 0, i.e. where a label is claimed; the coverage the manifest
  records equal to the arrays';
- the kind: the top-level `kind` attribute (written since stores have kinds) agrees with the
  spec's; a ground-truth store's confidence is exactly 1 where a label exists and 0 elsewhere.

Failed and pending rows are not read: their arrays hold fill values by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spherical.ade20k import IGNORE_ID
from storage.labelstore import (
    KIND_GROUND_TRUTH,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    LabelStore,
    StoreError,
    StoreSpec,
    array_specs,
)

UNIT_TOLERANCE = 1e-2  # | ||n|| - 1 | allowed for float16 normals
COVERAGE_TOLERANCE = 1e-3  # manifest coverage vs the arrays' (float16 rounding never moves it)


@dataclass(frozen=True)
class Problem:
    """One integrity problem: of a panorama (`pano_id`, `index`) or of the store as a whole."""

    message: str
    pano_id: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.pano_id is None and self.index is None:
            return f"store: {self.message}"
        return f"{self.pano_id} (index {self.index}): {self.message}"


@dataclass
class Verification:
    """The outcome of `verify_store`: what was checked and what is wrong."""

    problems: list[Problem] = field(default_factory=list)
    kind: str = "unknown"  # the store's kind (storage.labelstore.STORE_KINDS) once it opened
    rows: int = 0
    ok_rows_read: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def bad_panoramas(self) -> int:
        """Number of panoramas with at least one problem."""
        return len({p.index for p in self.problems if p.index is not None})


def verify_store(url: str, on_progress: Callable[[int, int], None] | None = None) -> Verification:
    """Check the store at `url` (see the module doc); `on_progress(done, total)` while `ok` rows are read."""
    result = Verification()
    try:
        store = LabelStore.open(url)
        rows = store.rows()
    except (StoreError, OSError, ValueError, KeyError) as err:
        result.problems.append(Problem(f"cannot open: {err}"))
        return result
    result.rows = len(rows)
    result.kind = store.spec.kind
    recorded_kind = store.group.attrs.get("kind")
    if recorded_kind is not None and recorded_kind != store.spec.kind:
        result.problems.append(Problem(f"the kind attribute says {recorded_kind!r}, the spec {store.spec.kind!r}"))
    result.statuses = {s: sum(r.get("status") == s for r in rows) for s in (STATUS_OK, STATUS_FAILED, STATUS_PENDING)}
    count = _check_arrays(store, result.problems)
    ok_rows = _check_rows(rows, count, result.problems)
    shards = _existing_shards(store)
    for done, row in enumerate(ok_rows, 1):
        result.problems += [Problem(m, row["pano_id"], int(row["index"])) for m in _check_panorama(store, row, shards)]
        result.ok_rows_read += 1
        if on_progress is not None:
            on_progress(done, len(ok_rows))
    return result


def _check_arrays(store: LabelStore, problems: list[Problem]) -> int | None:
    """Arrays exist with the spec's dtype and shape; returns the number of panoramas they hold."""
    counts = {}
    for a in array_specs(store.spec):
        try:
            arr = store.group[a.name]
        except KeyError:
            problems.append(Problem(f"array {a.name} is missing"))
            continue
        if str(arr.dtype) != a.dtype:
            problems.append(Problem(f"array {a.name} has dtype {arr.dtype}, expected {a.dtype}"))
        if tuple(arr.shape[1:]) != a.shape:
            problems.append(
                Problem(f"array {a.name} holds panoramas of shape {tuple(arr.shape[1:])}, expected {a.shape}")
            )
        counts[a.name] = int(arr.shape[0])
    if len(set(counts.values())) > 1:
        problems.append(Problem(f"arrays hold different numbers of panoramas: {counts}"))
    return min(counts.values()) if counts else None


def _check_rows(rows: list[dict[str, Any]], count: int | None, problems: list[Problem]) -> list[dict[str, Any]]:
    """Manifest consistency; returns the `ok` rows whose arrays can be read."""
    readable = []
    seen_ids: dict[str, int] = {}
    for row in rows:
        index, pano_id = int(row["index"]), row.get("pano_id")
        if row.get("status") not in (STATUS_OK, STATUS_FAILED, STATUS_PENDING):
            problems.append(Problem(f"unknown status {row.get('status')!r}", pano_id, index))
        if pano_id in seen_ids:
            problems.append(Problem(f"id also used by the row of index {seen_ids[pano_id]}", pano_id, index))
        seen_ids.setdefault(pano_id, index)
        if count is not None and not 0 <= index < count:
            problems.append(Problem(f"row points past the end of the arrays ({count} panoramas)", pano_id, index))
            continue
        if row.get("status") == STATUS_OK:
            readable.append(row)
    if count is not None:
        missing = sorted(set(range(count)) - {int(r["index"]) for r in rows})
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            problems.append(Problem(f"no manifest row for array indices {shown}"))
    return readable


def _existing_shards(store: LabelStore) -> dict[str, set[str]]:
    """Per array, the shard keys (relative to the array, e.g. "c/3/0/0") that exist: one
    listing per array, not one request per shard."""
    out = {}
    for a in array_specs(store.spec):
        if a.name not in store.group:
            continue
        base = f"{store.root}/{a.name}"
        try:
            found = store.fs.find(base)
        except FileNotFoundError:
            found = []
        out[a.name] = {path[len(base) + 1 :] for path in found}
    return out


def _shard_key(store: LabelStore, name: str, index: int) -> str:
    arr = store.group[name]
    return arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))


def _check_panorama(store: LabelStore, row: Mapping[str, Any], shards: Mapping[str, set[str]]) -> list[str]:
    """Problems of one `ok` panorama."""
    spec, index = store.spec, int(row["index"])
    problems = []
    arrays: dict[str, np.ndarray] = {}
    for a in array_specs(spec):
        if a.name not in shards:
            continue
        key = _shard_key(store, a.name, index)
        if key not in shards[a.name]:
            problems.append(f"{a.name}: shard {a.name}/{key} is missing")
            continue
        try:
            arrays[a.name] = store.group[a.name][index]
        except Exception as err:  # a corrupt shard may fail in any codec
            problems.append(f"{a.name}: cannot read: {type(err).__name__}: {err}")
    return problems + _check_values(spec, row, arrays)


def _count(mask: np.ndarray) -> str:
    n = int(mask.sum())
    return f"{n} pixel{'s' if n != 1 else ''}"


def _check_values(spec: StoreSpec, row: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[str]:
    problems = []
    has: dict[str, np.ndarray] = {}
    if "depth" in arrays:
        depth = arrays["depth"].astype(np.float32)
        labelled = ~np.isnan(depth)
        bad = labelled & ~(np.isfinite(depth) & (depth > 0))
        if bad.any():
            problems.append(f"depth: {_count(bad)} infinite or not positive")
        has["depth"] = labelled & ~bad
    if "normals" in arrays:
        normals = arrays["normals"].astype(np.float32)
        finite = np.isfinite(normals)
        partial = finite.any(0) & ~finite.all(0)
        if partial.any():
            problems.append(f"normals: {_count(partial)} with some components NaN/inf and others not")
        complete = finite.all(0)
        norm = np.linalg.norm(np.where(finite, normals, 0.0), axis=0)
        off = complete & (np.abs(norm - 1.0) > UNIT_TOLERANCE)
        if off.any():
            worst = norm[off][np.argmax(np.abs(norm[off] - 1.0))]
            problems.append(f"normals: {_count(off)} not unit length (worst |n| = {worst:.3g})")
        has["normals"] = complete
    if "semantic" in arrays:
        ids = arrays["semantic"]
        invalid = (ids != IGNORE_ID) & (ids >= len(spec.class_names))
        if invalid.any():
            problems.append(
                f"semantic: {_count(invalid)} with class ids {sorted(set(ids[invalid].tolist()))[:5]} "
                f"beyond the {len(spec.class_names)} classes"
            )
        has["semantic"] = ids != IGNORE_ID
    for task in spec.tasks:
        name = f"{task}_confidence"
        if name not in arrays:
            continue
        conf = arrays[name].astype(np.float32)
        bad = ~np.isfinite(conf) | (conf < 0) | (conf > 1)
        if bad.any():
            problems.append(f"{name}: {_count(bad)} not finite or outside [0, 1]")
        if task in has:
            claimed = (np.nan_to_num(conf) > 0) & ~has[task]
            if claimed.any():
                none = "255" if task == "semantic" else "NaN"
                problems.append(f"{task}: {_count(claimed)} {none} where {name} > 0 claims a label")
            if spec.kind == KIND_GROUND_TRUTH:
                exact = np.where(has[task], conf == 1.0, conf == 0.0)
                if not exact.all():
                    problems.append(f"{name}: {_count(~exact)} not 1 where labelled or not 0 elsewhere (ground truth)")
            recorded = row.get(f"{task}_coverage")
            actual = float(has[task].mean())
            if recorded is not None and math.isfinite(recorded) and abs(recorded - actual) > COVERAGE_TOLERANCE:
                problems.append(f"{task}: the manifest records coverage {recorded:.4f}, the arrays hold {actual:.4f}")
    return problems
