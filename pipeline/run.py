"""The driver of `mtpano labels` and `mtpano predict`: find the panoramas, prepare the store,
stream the work to Ray workers, show progress, and summarise.

The panoramas flow through Ray: CPU tasks decode them (`images.decode_batch`) and actors of
a worker class (`labeler.PanoramaLabeler`, `predictor.PanoramaPredictor`; one per GPU, or N
CPU workers) label or predict them and write them. The driver
only reads the workers' small result rows, so it stays light; it consolidates the store's
manifest now and then and at the end.

Resuming: a panorama whose row says `ok` is skipped; every other one (pending, failed, or
cut off by a crash before its row was written) is redone from scratch, so a run that was
killed and started again ends with the same store as one that was not.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.config import LabelConfig, RunOptions
from pipeline.images import decode_batch, find_panoramas
from pipeline.labeler import PanoramaLabeler
from pipeline.memory import freed_memory_kept, keep_freed_memory
from pipeline.teachers.base import METRIC_ZDEPTH, TeacherError
from pipeline.teachers.registry import ResolvedTeacher, check_teacher_set, resolve
from storage.labelstore import STATUS_FAILED, STATUS_OK, LabelStore, PanoramaEntry, StoreError, StoreSpec

# A decode task's logical CPUs, and those kept free for them on a machine without GPUs: one
# decode at a time beside the workers there. Each decode running at once needs a Ray worker
# process of its own, and on a small machine starting a second one (about a CPU second) only
# slows the labelling workers it shares the cores with.
_DECODE_CPUS = 0.5
_RESERVED_CPUS = _DECODE_CPUS
# How long an idle Ray worker process of a local instance lives. Ray's default (1 s, once there
# are more processes than CPUs) ends the decode tasks' processes between two calls of the
# labelling workers on a small machine, and every call would then start new ones.
_IDLE_WORKER_MS = 60_000


class UsageError(Exception):
    """The command cannot start as asked (bad data path, teacher spec or store); exit code 2."""


@dataclass
class RunSummary:
    """What a run did. `failed` lists (pano_id, error) of every failed panorama in the store."""

    store: str
    total: int
    done_before: int
    labelled: int = 0
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 3 if self.failed else 0


def resolve_teachers(config: LabelConfig) -> dict[str, ResolvedTeacher]:
    """Validate the teacher specs and fetch hub weights once, on the driver."""
    resolved = {}
    for task, spec in config.teacher_specs().items():
        r = resolve(spec, task)
        if r is not None:
            resolved[task] = r
    if not resolved:
        raise TeacherError("every teacher is none: there is nothing to label")
    check_teacher_set(resolved)
    return resolved


def store_spec(config: LabelConfig, teachers: dict[str, ResolvedTeacher]) -> StoreSpec:
    """The store spec of a run of `config` with `teachers`."""
    depth = teachers.get("depth")
    semantic = teachers.get("semantic")
    layout = config.patch_layout()
    name = layout.name if not layout.name.startswith("random:") else f"{layout.name}@seed={config.layout_seed}"
    return StoreSpec(
        erp_height=config.erp_height,
        tasks=tuple(t for t in ("depth", "semantic", "normals") if t in teachers),
        depth_kind=None
        if depth is None
        else ("metric_range" if depth.depth_kind == METRIC_ZDEPTH else "relative_disparity"),
        class_names=tuple(semantic.class_names) if semantic is not None else (),
        teachers={task: dict(r.info) for task, r in teachers.items()},
        layout=name,
        fov_deg=tuple(float(f) for f in layout.fov_x_deg),
        patch_size=config.patch_size,
        keep_patches=config.keep_patches,
        fusion=config.fusion.to_json(),
    )


def prepare_store(
    url: str, spec: StoreSpec, found: list[tuple[str, str]], overwrite: bool, attrs: dict[str, Any]
) -> LabelStore:
    """Open the store at `url` for this run, or create it.

    An existing store made with the same spec is continued: its panoramas keep their
    indices and new ones are appended. One made with another spec is refused unless
    `overwrite`, in which case it is replaced.
    """
    if LabelStore.exists(url):
        try:
            store = LabelStore.open(url, mode="r+")
        except StoreError as err:
            raise UsageError(str(err)) from None
        differences = store.spec.differences(spec)
        if not differences:
            known = {e.pano_id for e in store.entries()}
            start = store.num_panoramas
            new = [(p, s) for p, s in found if p not in known]
            if new:
                store.add_panoramas([PanoramaEntry(p, start + i, s) for i, (p, s) in enumerate(new)])
            return store
        if not overwrite:
            raise UsageError(
                f"{url} holds labels made with another configuration ({', '.join(differences)} differ); "
                "pass --overwrite to replace it, or choose another --out"
            )
    entries = [PanoramaEntry(p, i, s) for i, (p, s) in enumerate(found)]
    try:
        return LabelStore.create(url, spec, entries, attrs)
    except StoreError as err:
        raise UsageError(str(err)) from None


def _worker_resources(options: RunOptions, cluster: Mapping[str, float]) -> tuple[int, dict[str, float], int | None]:
    """(number of workers, Ray resources per worker, torch threads per worker) on a Ray
    instance of `cluster` resources (`ray.cluster_resources()`). The workers leave a decode
    task its CPUs, else no panorama would ever be decoded."""
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if gpus:
        workers = options.workers or gpus
        per_worker = min(1.0, (cpus - _RESERVED_CPUS) / min(workers, gpus))
        return workers, {"num_gpus": 1, "num_cpus": per_worker}, options.threads_per_worker
    workers = options.workers or 1
    per_worker = (cpus - _RESERVED_CPUS) / workers
    threads = options.threads_per_worker or max(1, int(os.cpu_count() or 1) // workers)
    return workers, {"num_cpus": per_worker}, threads


def _start_ray(address: str | None) -> None:
    """Join `address`, or start a local Ray whose workers import what the driver imports."""
    import ray

    if ray.is_initialized():
        return
    # Ray's own chatter (start-up notes) would bury the progress bar;
    # its errors still surface as exceptions, and workers' output is still forwarded.
    logging.getLogger("ray").setLevel(logging.ERROR)
    python_path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if address:
        # Workers on other machines get the driver's import path through the job's runtime env.
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": python_path}}, **options)
        return
    # A local instance ("local": never a cluster some earlier `ray start` left on this node)
    # inherits this process's environment: its workers get the import path from it, which
    # lets them start as plain workers (a runtime env would make Ray start dedicated ones,
    # seconds later).
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = python_path
    try:
        ray.init(address="local", _system_config={"idle_worker_killing_time_threshold_ms": _IDLE_WORKER_MS}, **options)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


ProgressCallback = Callable[[dict[str, Any]], None]


def run_labels(
    data: str,
    out: str,
    config: LabelConfig,
    options: RunOptions,
    on_start: Callable[[int, int], None] | None = None,
    on_result: ProgressCallback | None = None,
) -> RunSummary:
    """Label the panoramas of `data` into the store at `out`.

    Args:
        data: a folder of panoramas or a text file of paths (see `images.find_panoramas`).
        out: the store's path or fsspec URL.
        on_start: called with (panoramas to label, panoramas already done).
        on_result: called with each finished panorama's result row (index, pano_id,
            status, error, seconds).
    Raises:
        UsageError: bad data path, teacher spec or store (nothing was written).
    """
    try:
        teachers = resolve_teachers(config)
        spec = store_spec(config, teachers)
    except (ValueError, TeacherError) as err:
        raise UsageError(str(err)) from None
    kwargs = {"config": config, "teachers": teachers}
    return run_store(data, out, spec, PanoramaLabeler, kwargs, options, on_start, on_result)


def run_store(
    data: str,
    out: str,
    spec: StoreSpec,
    worker: type,
    worker_kwargs: dict[str, Any],
    options: RunOptions,
    on_start: Callable[[int, int], None] | None = None,
    on_result: ProgressCallback | None = None,
) -> RunSummary:
    """Fill the store at `out` (made with `spec`) with the panoramas of `data`, one worker per
    GPU (or `options.workers`), in this process or on Ray actors.

    `worker` is built once per process as `worker(store_url=..., threads=..., **worker_kwargs)`
    and called with `images.decode_batch` results; it writes each panorama's arrays and row
    itself and returns their result rows (`PanoramaLabeler`, `predictor.PanoramaPredictor`).
    Raises:
        UsageError: bad data path or store (nothing was written).
    """
    try:
        found = find_panoramas(data)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    from mtpano import __version__

    attrs = {"mtpano_version": __version__, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    store = prepare_store(out, spec, found, options.overwrite, attrs)
    sources = dict(found)
    rows = [r for r in store.rows() if r["pano_id"] in sources]
    # Read from where the files are now: a folder may have moved since the store was made.
    todo = [{**r, "source": sources[r["pano_id"]]} for r in rows if r["status"] != STATUS_OK]
    summary = RunSummary(store=out, total=len(rows), done_before=len(rows) - len(todo))
    if on_start is not None:
        on_start(len(todo), summary.done_before)
    started = time.perf_counter()
    if todo:
        run = _run_in_process if options.in_process else _run_with_ray
        try:
            run(store, todo, worker, worker_kwargs, options, summary, on_result)
        finally:
            store.consolidate()
    summary.seconds = time.perf_counter() - started
    summary.failed = [
        (r["pano_id"], r["error"]) for r in store.rows() if r["pano_id"] in sources and r["status"] == STATUS_FAILED
    ]
    return summary


def _count(summary: RunSummary, result: dict[str, Any], on_result: ProgressCallback | None) -> None:
    summary.labelled += 1
    summary.ok += result["status"] == STATUS_OK
    if on_result is not None:
        on_result(result)


def _run_in_process(
    store: LabelStore,
    todo: list[dict[str, Any]],
    worker: type,
    worker_kwargs: dict[str, Any],
    options: RunOptions,
    summary: RunSummary,
    on_result: ProgressCallback | None,
) -> None:
    with freed_memory_kept(options.keep_freed_memory):
        built = worker(store_url=store.url, threads=options.threads_per_worker, **worker_kwargs)
        step = options.panoramas_per_call
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            batch = {
                "index": np.array([r["index"] for r in chunk], np.int64),
                "pano_id": np.array([r["pano_id"] for r in chunk], dtype=object),
                "source": np.array([r["source"] for r in chunk], dtype=object),
            }
            results = built(decode_batch(batch))
            for k in range(len(chunk)):
                _count(summary, {key: values[k] for key, values in results.items()}, on_result)
        del built  # its memory is given back with the rest as the block ends


class _Actor:
    """A Ray actor that builds a worker (a `PanoramaLabeler`, a `PanoramaPredictor`) in its own
    process once, then hands it one call of panoramas at a time."""

    def __init__(self, worker: type, kwargs: dict[str, Any], keep_memory: bool) -> None:
        if keep_memory:
            keep_freed_memory()  # the actor's process is the worker's alone
        self.worker = worker(**kwargs)

    def call(self, *decoded: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the worker on the panoramas of `decoded` (one `decode_batch` result each) in one call."""
        joined = {key: [value for d in decoded for value in d[key]] for key in decoded[0]}
        return self.worker({key: values if key == "image" else np.array(values) for key, values in joined.items()})


def _run_with_ray(
    store: LabelStore,
    todo: list[dict[str, Any]],
    worker: type,
    worker_kwargs: dict[str, Any],
    options: RunOptions,
    summary: RunSummary,
    on_result: ProgressCallback | None,
) -> None:
    """Stream the panoramas to Ray actors: each call's panoramas are decoded by CPU tasks (one
    each) while the actors work, and every actor has the next call queued behind its current
    one. A worker process that dies is restarted and its call retried."""
    import ray

    _start_ray(options.address)
    workers, resources, threads = _worker_resources(options, ray.cluster_resources())
    step = options.panoramas_per_call
    calls = iter([todo[i : i + step] for i in range(0, len(todo), step)])
    decode = ray.remote(num_cpus=_DECODE_CPUS)(decode_batch)
    actor_class = ray.remote(_Actor).options(max_restarts=-1, max_task_retries=-1, **resources)
    kwargs = {"store_url": store.url, "threads": threads, **worker_kwargs}
    count = min(workers, -(-len(todo) // step))
    actors = [actor_class.remote(worker, kwargs, options.keep_freed_memory) for _ in range(count)]
    running: dict[Any, Any] = {}  # the result of a call -> its actor

    def submit(actor: Any) -> None:
        chunk = next(calls, None)
        if chunk is not None:
            decoded = [
                decode.remote({key: np.array([r[key]]) for key in ("index", "pano_id", "source")}) for r in chunk
            ]
            running[actor.call.remote(*decoded)] = actor

    for actor in actors:
        submit(actor)
        submit(actor)
    last = time.perf_counter()
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        actor = running.pop(done)
        results = ray.get(done)
        for k in range(len(results["index"])):
            _count(summary, {key: values[k] for key, values in results.items()}, on_result)
        submit(actor)
        if time.perf_counter() - last > options.consolidate_every_s:
            store.consolidate()
            last = time.perf_counter()
