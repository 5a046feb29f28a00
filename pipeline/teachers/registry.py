"""Teacher specs, presets, and building teachers on the driver and on the workers.

A spec (the value of `--depth-teacher`, `--semantic-teacher` or `--normal-teacher`) is

- a preset name: `quality` (default), `fast` or `sim`, expanded per task (`PRESETS`);
- `hf:MODEL_ID_OR_LOCAL_DIR`, optionally `hf:owner/name@revision`: Depth Anything for depth,
  Mask2Former for semantics, Marigold (diffusers) for normals;
- `py:package.module:factory`: a user plugin (`factory()` returns a teacher, see
  `pipeline.teachers.base`); imported with the current directory on `sys.path`, as
  `python -m` does;
- `sim` / `sim:key=value,...`: simulated teachers on the synthetic world (`pipeline.teachers.sim`);
- `geometric` (normals only): normals from the depth teacher's output;
- `none`: no teacher for the task.

Two steps. On the driver, `resolve(spec, task)` validates the spec, fetches or checks hub
weights once and returns a small picklable `ResolvedTeacher` (with the teacher's `describe()`
information for the store's attributes). On each worker, `load_teacher(resolved, device)`
builds the teacher once, from local files only.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pipeline.teachers import geometric, hf_depth, hf_semantic, marigold, sim
from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, TASKS, DepthKind, Task, TeacherError
from pipeline.teachers.hf_common import ResolvedSource, read_json, resolve_hf_source, teacher_option
from spherical.ade20k import ADE20K_CLASSES

SpecKind = Literal["hf", "py", "sim", "geometric", "none"]

DEFAULT_PRESET = "quality"
# Named teacher sets, one spec per task. `quality`: the strongest of each family that fits one
# 80 GB GPU; `fast`: small models and geometric normals; `sim`: simulated, for demos and tests.
# mask2former-swin-tiny-ade-semantic has safetensors weights only on the hub's conversion
# branch refs/pr/2 (its main branch holds a pickle), hence the pinned revision.
PRESETS: dict[str, dict[str, str]] = {
    "quality": {
        "depth": "hf:depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf",
        "semantic": "hf:facebook/mask2former-swin-large-ade-semantic",
        "normals": "hf:prs-eth/marigold-normals-v1-1",
    },
    "fast": {
        "depth": "hf:depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
        "semantic": "hf:facebook/mask2former-swin-tiny-ade-semantic@refs/pr/2",
        "normals": "geometric",
    },
    "sim": {"depth": "sim", "semantic": "sim", "normals": "sim"},
}
_PY_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class ParsedSpec:
    """A teacher spec split into its kind and body.

    Fields:
        kind: hf | py | sim | geometric | none.
        spec: the full spec after preset expansion (e.g. "hf:facebook/...").
        body: what follows the kind's prefix ("" for geometric and none; for sim the
            whole spec, which sim parses itself).
        preset: the preset it came from, or None.
    """

    kind: SpecKind
    spec: str
    body: str
    preset: str | None = None


def _usage(task: Task) -> str:
    presets = ", ".join(PRESETS)
    extra = ", geometric" if task == "normals" else ""
    forms = "hf:MODEL_ID_OR_LOCAL_DIR, py:package.module:factory, sim[:key=value,...]"
    return f"use a preset ({presets}), {forms}{extra} or none"


def parse_spec(spec: str, task: Task) -> ParsedSpec:
    """Parse the spec of `task`'s teacher (see the module doc)."""
    if task not in TASKS:
        raise TeacherError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    text = spec.strip()
    preset = None
    if text in PRESETS:
        preset, text = text, PRESETS[text][task]
    if text == "none":
        return ParsedSpec("none", text, "", preset)
    if text == "geometric":
        if task != "normals":
            raise TeacherError(f"{teacher_option(task)} geometric: geometric is a normals teacher")
        return ParsedSpec("geometric", text, "", preset)
    if text == "sim" or text.startswith("sim:"):
        return ParsedSpec("sim", text, text, preset)
    if text.startswith("hf:"):
        return ParsedSpec("hf", text, text[3:], preset)
    if text.startswith("py:"):
        body = text[3:]
        if not _PY_TARGET.fullmatch(body):
            raise TeacherError(f"{teacher_option(task)} {text}: expected py:package.module:factory")
        return ParsedSpec("py", text, body, preset)
    raise TeacherError(f"{teacher_option(task)} {spec!r}: unknown teacher spec; {_usage(task)}")


@dataclass(frozen=True)
class ResolvedTeacher:
    """A validated teacher spec, ready to be built on any worker (picklable, small).

    Fields:
        task: depth | semantic | normals.
        spec: the spec after preset expansion.
        kind: hf | py | sim | geometric.
        requested: the spec as given (e.g. "quality").
        info: the teacher's `describe()` (JSON-able; spec, model id, revision, ...).
        depth_kind: depth teachers: "metric_zdepth" or "relative_disparity"; else None.
        class_names: semantic teachers: class names in id order; else None.
        from_depth: normals teachers that work on the depth teacher's output.
        source: hf teachers: the local weights directory and revision.
        import_paths: py teachers: sys.path entries the plugin module needs (the driver's
            working directory and the module's root), for workers started elsewhere.
    """

    task: Task
    spec: str
    kind: SpecKind
    requested: str
    info: dict[str, Any] = field(hash=False)
    depth_kind: DepthKind | None = None
    class_names: tuple[str, ...] | None = None
    from_depth: bool = False
    source: ResolvedSource | None = None
    import_paths: tuple[str, ...] = ()


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _file_revision(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _module_root(module: Any) -> str | None:
    """The sys.path entry a module was imported from (its top package's parent)."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    depth = module.__name__.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    return str(Path(file).resolve().parents[depth])


def _import_factory(target: str, prefix: str, extra_paths: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """Import `package.module:factory` with the working directory (and `extra_paths`) on
    sys.path; returns (module, factory)."""
    module_name, _, attr = target.partition(":")
    for path in (*extra_paths, os.getcwd()):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure inside the user's module is reported, in one line
        raise TeacherError(f"{prefix}: cannot import {module_name}: {_one_line(err)}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise TeacherError(f"{prefix}: module {module_name} has no attribute {attr!r}")
    if not callable(factory):
        raise TeacherError(f"{prefix}: {target} is not callable")
    return module, factory


def _call_factory(factory: Any, device: torch.device | str | None, prefix: str) -> Any:
    """factory(), or factory(device=...) when it takes a `device` argument."""
    try:
        takes_device = "device" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_device = False
    try:
        return factory(device=device) if takes_device and device is not None else factory()
    except Exception as err:  # the plugin's own failure, reported in one line
        raise TeacherError(f"{prefix}: the factory raised {_one_line(err)}") from None


def validate_teacher(teacher: Any, task: Task, prefix: str) -> None:
    """Check that a plugin's object satisfies the teacher protocol for `task`."""
    found = getattr(teacher, "task", None)
    if found not in TASKS:
        raise TeacherError(
            f"{prefix}: the factory returned {type(teacher).__name__}, which is not a teacher "
            f"(it needs task = 'depth', 'semantic' or 'normals' and predict(images, cameras))"
        )
    if found != task:
        raise TeacherError(f"{prefix}: this is a {found} teacher, but it was given as {teacher_option(task)}")
    if getattr(teacher, "from_depth", False):
        if task != "normals" or not callable(getattr(teacher, "predict_from_depth", None)):
            raise TeacherError(f"{prefix}: a from_depth teacher must be a normals teacher with predict_from_depth()")
    elif not callable(getattr(teacher, "predict", None)):
        raise TeacherError(f"{prefix}: {type(teacher).__name__} has no predict(images, cameras) method")
    if task == "depth" and getattr(teacher, "depth_kind", METRIC_ZDEPTH) not in (METRIC_ZDEPTH, RELATIVE_DISPARITY):
        raise TeacherError(f"{prefix}: depth_kind must be {METRIC_ZDEPTH!r} or {RELATIVE_DISPARITY!r}")
    names = getattr(teacher, "class_names", None)
    if task == "semantic" and names is not None and (not names or not all(isinstance(n, str) for n in names)):
        raise TeacherError(f"{prefix}: class_names must be a non-empty sequence of strings")
    batch = getattr(teacher, "batch_size", 1)
    if not isinstance(batch, int) or batch < 1:
        raise TeacherError(f"{prefix}: batch_size must be a positive int, got {batch!r}")


def _describe(teacher: Any, prefix: str) -> dict[str, Any]:
    if not hasattr(teacher, "describe"):
        return {}
    info = teacher.describe()
    if not isinstance(info, dict):
        raise TeacherError(f"{prefix}: describe() must return a dict, got {type(info).__name__}")
    try:
        json.dumps(info)
    except (TypeError, ValueError) as err:
        raise TeacherError(f"{prefix}: describe() must return JSON-able values: {err}") from None
    return info


def _resolved_from_instance(
    parsed: ParsedSpec,
    task: Task,
    requested: str,
    teacher: Any,
    defaults: dict[str, Any] | None = None,
    import_paths: tuple[str, ...] = (),
) -> ResolvedTeacher:
    prefix = f"{task} teacher {parsed.spec}"
    info = {**(defaults or {}), **_describe(teacher, prefix), "spec": parsed.spec}
    names = getattr(teacher, "class_names", None)
    return ResolvedTeacher(
        task=task,
        spec=parsed.spec,
        kind=parsed.kind,
        requested=requested,
        info=info,
        depth_kind=getattr(teacher, "depth_kind", METRIC_ZDEPTH) if task == "depth" else None,
        class_names=(tuple(names) if names is not None else ADE20K_CLASSES) if task == "semantic" else None,
        from_depth=bool(getattr(teacher, "from_depth", False)),
        import_paths=import_paths,
    )


def resolve(spec: str, task: Task) -> ResolvedTeacher | None:
    """Validate `spec` for `task` on the driver; None when the spec is `none`.

    hf: fetches (or finds in the cache) the weights once and reads their configs, without
    loading the model. py: imports the plugin and calls its factory once to check the
    object it returns (keep factories cheap; weights can load on first use). Raises
    TeacherError with one line naming the task and the spec.
    """
    parsed = parse_spec(spec, task)
    prefix = f"{task} teacher {parsed.spec}"
    requested = spec.strip()
    if parsed.kind == "none":
        return None
    if parsed.kind == "hf":
        if task == "normals":
            marigold.require_diffusers(parsed.spec)
            source = resolve_hf_source(parsed.body, task, required_file="model_index.json")
            info = marigold.describe_source(parsed.spec, source)
            return ResolvedTeacher(task, parsed.spec, "hf", requested, info, source=source)
        source = resolve_hf_source(parsed.body, task)
        if task == "depth":
            info = hf_depth.describe_source(parsed.spec, source)
            kind = info["depth_kind"]
            return ResolvedTeacher(task, parsed.spec, "hf", requested, info, depth_kind=kind, source=source)
        info = hf_semantic.describe_source(parsed.spec, source)
        names = hf_semantic.class_names_of(read_json(source.path, "config.json"), prefix)
        return ResolvedTeacher(task, parsed.spec, "hf", requested, info, class_names=names, source=source)
    if parsed.kind == "py":
        module, factory = _import_factory(parsed.body, prefix)
        teacher = _call_factory(factory, None, prefix)
        validate_teacher(teacher, task, prefix)
        defaults = {"model_id": parsed.body, "revision": _file_revision(getattr(module, "__file__", None))}
        paths = tuple(dict.fromkeys(p for p in (os.getcwd(), _module_root(module)) if p))
        return _resolved_from_instance(parsed, task, requested, teacher, defaults, paths)
    return _resolved_from_instance(parsed, task, requested, _build_builtin(parsed, task))


def _build_builtin(parsed: ParsedSpec, task: Task) -> Any:
    if parsed.kind == "sim":
        return sim.SimTeacher(task, sim.parse_sim_spec(parsed.spec, task), parsed.spec)
    return geometric.GeometricNormalsTeacher(spec=parsed.spec)


def load_teacher(resolved: ResolvedTeacher, device: torch.device | str) -> Any:
    """Build the teacher of `resolved` on a worker's `device` (local files only)."""
    prefix = f"{resolved.task} teacher {resolved.spec}"
    if resolved.kind == "hf":
        assert resolved.source is not None, "an hf teacher is resolved with its source"
        if resolved.task == "depth":
            return hf_depth.DepthAnythingTeacher(resolved.spec, resolved.source, device)
        if resolved.task == "semantic":
            return hf_semantic.Mask2FormerSemanticTeacher(resolved.spec, resolved.source, device)
        return marigold.MarigoldNormalsTeacher(resolved.spec, resolved.source, device)
    if resolved.kind == "py":
        _, factory = _import_factory(resolved.spec[3:], prefix, resolved.import_paths)
        teacher = _call_factory(factory, device, prefix)
        validate_teacher(teacher, resolved.task, prefix)
        return teacher
    return _build_builtin(parse_spec(resolved.spec, resolved.task), resolved.task)


def check_teacher_set(resolved: Mapping[str, ResolvedTeacher | None]) -> None:
    """Refuse combinations that cannot work: a from-depth normals teacher needs a depth
    teacher. (A relative one will do: the fusion hands it the patches' depth after the joint
    alignment, which fixes each patch's disparity shift; normals do not depend on the scale.)"""
    normals = resolved.get("normals")
    if normals is None or not normals.from_depth:
        return
    if resolved.get("depth") is None:
        raise TeacherError(f"normals teacher {normals.spec} derives normals from depth: it needs a depth teacher")
