"""The figures of a store's panoramas as `mtpano inspect` and `mtpano report` show them:
loaded from the manifest (optionally recomputed from the arrays, or completed with
ground-truth metrics), sorted worst first, and summarised store-wide.

The table of a store never touches the label arrays unless asked: the figures were computed
at labelling time and kept in the manifest (`pipeline.quality`, docs/quality.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import quality
from pipeline.quality import FIGURES, SeamGeometry
from storage import groundtruth
from storage.labelstore import (
    LABEL_TASKS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    LabelStore,
    StoreSpec,
)

Progress = Callable[[int, int], None]  # (done, total)


def label_arrays(spec: StoreSpec) -> list[str]:
    """Names of a store's label arrays (no patches): the tasks and their confidences."""
    return [*spec.tasks, *(f"{t}_confidence" for t in spec.tasks)]


def store_seams(spec: StoreSpec) -> SeamGeometry | None:
    """The seams of a store's patch layout; None for a store without one (ground truth,
    predictions), which has no seam figures, seam panel or footprints."""
    return SeamGeometry.for_store(spec) if spec.has_layout else None


def load_figures(
    store: LabelStore,
    recompute: bool = False,
    gt_dir: Path | None = None,
    on_progress: Progress | None = None,
    indices: set[int] | None = None,
) -> list[dict[str, Any]]:
    """One dict per panorama: its manifest row plus the derived figures (`quality.with_derived`).

    Args:
        recompute: replace the figures the arrays determine (coverage, confidence, seams,
            class histogram) by values recomputed from the stored arrays of every `ok` row.
        gt_dir: a folder of ground truth in `mtpano synth`'s gt/ format: adds the GT metrics
            of every `ok` row that has ground-truth files (`storage.groundtruth.ground_truth_files`).
        on_progress: called with (done, total) while arrays are read.
        indices: recompute / compare with ground truth only these panoramas (None: all).
    """
    rows = [dict(r) for r in store.rows()]
    if recompute or gt_dir is not None:
        seams = store_seams(store.spec) if recompute else None
        names = label_arrays(store.spec)
        todo = [r for r in rows if r["status"] == STATUS_OK and (indices is None or int(r["index"]) in indices)]
        for done, row in enumerate(todo, 1):
            files = groundtruth.ground_truth_files(gt_dir, row["pano_id"]) if gt_dir is not None else {}
            if recompute or files:
                arrays = store.read(int(row["index"]), names)
                if recompute:
                    row.update(quality.array_figures(store.spec, arrays, seams))
                if files:
                    gt = groundtruth.read_ground_truth(files, store.spec.erp_height)
                    row.update(quality.gt_figures(store.spec, arrays, gt))
            if on_progress is not None:
                on_progress(done, len(todo))
    return [quality.with_derived(r) for r in rows]


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def has_ground_truth(row: Mapping[str, Any]) -> bool:
    """Whether a row has any ground-truth metric."""
    return any(f.source == "gt" and is_finite(row.get(f.name)) for f in FIGURES.values())


def ok_values(rows: Iterable[Mapping[str, Any]], name: str) -> list[float]:
    """The finite values of figure `name` over the `ok` rows (what summaries and plots count)."""
    return [float(r[name]) for r in rows if r["status"] == STATUS_OK and is_finite(r.get(name))]


def present_figures(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Registry figures with a finite value in at least one row, in registry order."""
    rows = list(rows)
    return [name for name in FIGURES if any(is_finite(r.get(name)) for r in rows)]


def scalar_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every column whose values are scalars (for CSV): base columns first, then by name."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if not isinstance(v, list | tuple | dict):
                columns.setdefault(k, None)
    first = ["pano_id", "index", "source", "status", "error"]
    return [c for c in first if c in columns] + sorted(c for c in columns if c not in first)


def sort_rows(rows: list[dict[str, Any]], figure: str, worst_first: bool = True) -> list[dict[str, Any]]:
    """Rows sorted by `figure`, worst first (or best first); rows without a finite value of it
    (failed and pending panoramas, tasks the store lacks) come last, in index order."""
    if figure not in FIGURES:
        raise KeyError(figure)
    spec = FIGURES[figure]
    have = [r for r in rows if is_finite(r.get(figure))]
    lack = [r for r in rows if not is_finite(r.get(figure))]
    have.sort(key=lambda r: (spec.badness(float(r[figure])), -int(r["index"])), reverse=worst_first)
    return have + sorted(lack, key=lambda r: int(r["index"]))


def default_columns(spec: StoreSpec, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The figures a table shows by default: per task coverage, confidence, disagreement and
    seam error (depth also the alignment residual), then any ground-truth metrics."""
    present = set(present_figures(rows))
    wanted = []
    for task in LABEL_TASKS:
        if task not in spec.tasks:
            continue
        disagreement = "normals_disagreement_deg" if task == "normals" else f"{task}_disagreement"
        wanted += [f"{task}_coverage", f"{task}_confidence_mean", disagreement, f"{task}_seam_error"]
        if task == "depth":
            wanted.append("depth_align_residual")
    wanted += [f.name for f in FIGURES.values() if f.source == "gt"]
    return [w for w in wanted if w in present]


def summary(store: LabelStore, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Store-wide facts and the mean of every figure over the `ok` panoramas."""
    spec = store.spec
    counts = {s: sum(r["status"] == s for r in rows) for s in (STATUS_OK, STATUS_FAILED, STATUS_PENDING)}
    present = present_figures(r for r in rows if r["status"] == STATUS_OK)  # each has an ok value
    means = {name: float(np.mean(ok_values(rows, name))) for name in present}
    return {
        "store": store.url,
        "kind": spec.kind,
        "source": spec.source,
        "panoramas": len(rows),
        **counts,
        "teachers": {t: _teacher_name(info) for t, info in spec.teachers.items()},
        "layout": spec.layout,
        "patches": spec.num_patches,
        "fov_deg": sorted(set(spec.fov_deg)),
        "patch_size": spec.patch_size,
        "label_size": [spec.erp_width, spec.erp_height],
        "depth_kind": spec.depth_kind,
        "means": means,
    }


def _teacher_name(info: Mapping[str, Any]) -> str:
    """A teacher as its spec, with the model id when the spec does not say it."""
    spec = str(info.get("spec", "?"))
    model = info.get("model_id")
    return spec if not model or str(model) in spec else f"{spec} ({model})"


# The means the one-line summary shows (all of them go to --json).
_SUMMARY_MEANS = ("confidence_mean", "disagreement", "disagreement_deg", "seam_error")


def summary_line(facts: Mapping[str, Any]) -> str:
    """The store-wide summary in one line."""
    fov = "/".join(f"{f:g}" for f in facts["fov_deg"][:3]) + ("..." if len(facts["fov_deg"]) > 3 else "")
    teachers = ", ".join(f"{t} {name}" for t, name in facts["teachers"].items())
    means = [
        f"{FIGURES[n].task} {FIGURES[n].header} {FIGURES[n].format(v)}"
        for n, v in facts["means"].items()
        if n.split("_", 1)[1] in _SUMMARY_MEANS or FIGURES[n].source == "gt"
    ]
    w, h = facts["label_size"]
    parts = [
        f"{facts['panoramas']} panoramas: {facts['ok']} ok, {facts['failed']} failed, {facts['pending']} pending",
        f"kind {describe_kind(facts['kind'], facts['source'])}",
    ]
    if facts["layout"]:
        parts += [
            f"teachers: {teachers}",
            f"layout {facts['layout']} ({facts['patches']} patches of {facts['patch_size']} px, FoV {fov}°)",
        ]
    parts.append(f"labels {w}x{h}" + (f" {facts['depth_kind']}" if facts["depth_kind"] else ""))
    if means:
        parts.append("mean " + ", ".join(means))
    return " · ".join(parts)


def describe_kind(kind: str, source: Mapping[str, Any]) -> str:
    """A store's kind and origin in a few words, e.g. "ground_truth (synth from /data/rooms, split val)"."""
    if not source:
        return kind
    what = [str(source[k]) for k in ("format", "model") if source.get(k)]
    if source.get("path"):
        what.append(f"from {source['path']}")
    parts = [" ".join(what)] if what else []
    if source.get("split"):
        parts.append(f"split {source['split']}")
    if source.get("step") is not None:
        parts.append(f"step {source['step']}")
    return f"{kind} ({', '.join(parts)})" if parts else kind


def find_panorama(rows: list[Mapping[str, Any]], pano_id: str) -> Mapping[str, Any]:
    """The row of `pano_id`: an exact id, else the one id whose last path component matches.

    Raises:
        LookupError: no panorama, or several, match (the message says which).
    """
    exact = [r for r in rows if r["pano_id"] == pano_id]
    if exact:
        return exact[0]
    name = pano_id.rsplit("/", 1)[-1]
    by_name = [r for r in rows if r["pano_id"].rsplit("/", 1)[-1] == name]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        raise LookupError(f"{pano_id!r} is ambiguous: " + ", ".join(r["pano_id"] for r in by_name[:5]))
    raise LookupError(f"no panorama {pano_id!r} in the store ({len(rows)} panoramas)")


def top_classes(spec: StoreSpec, row: Mapping[str, Any], count: int = 8) -> list[tuple[str, float]]:
    """The panorama's most frequent classes as (name, share of labelled pixels)."""
    hist = row.get("semantic_histogram")
    if not hist:
        return []
    order = np.argsort(hist)[::-1][:count]
    return [(spec.class_names[i], float(hist[i])) for i in order if hist[i] > 0]


def figures_by_task(spec: StoreSpec, row: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(task, figure name, value) of one panorama, task by task in registry order; figures
    the row lacks are left out."""
    out = []
    for task in spec.tasks:
        for figure in quality.task_figures(task):
            if figure.name in row and row[figure.name] is not None:
                out.append((task, figure.name, row[figure.name]))
    return out
