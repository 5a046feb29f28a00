"""Scoring a trained BridgeNet, or any store, against a ground-truth store: the logic behind
`mtpano evaluate` and `mtpano compare`, usable without the command line.

```python
from evaluation.evaluate import compare_stores, evaluate_model

result = evaluate_model("runs/tiny", "stores/s2d3d-val", protocol="stanford2d3d")
result.figures["per_panorama"]["depth_absrel"]   # the UniFuse/HoHoNet-style figure
result.to_json()                                  # what `--json` prints
result = compare_stores("stores/predictions", "stores/gt", protocol="synth", align="median")
```

Both score through one `evaluation.metrics.Meter` with the protocol's `MetricConfig`
(`evaluation.protocols`); docs/evaluation.md defines every figure and says how the class
lists, the alignment and the resolution are chosen:

- resolution: the protocol's ERP height, or the ground truth's own (`synth`); the ground
  truth (and a prediction store) of another height is resized with the stores' rules
  (`trainer.data.resize_item`), and a model predicts at that height;
- tasks: those both sides have (the model's outputs or the prediction store's tasks, and the
  ground truth's);
- classes: equal class lists are compared directly; ADE20K-150 predictions against ground
  truth in the protocol's classes go through the protocol's mapping (ADE20K classes without a
  counterpart predict "no class": a miss); any other pair is refused;
- depth alignment: `none` by default for metric predictions (`median`, `lsq` on request);
  relative predictions (a model or store whose depth kind is `relative_disparity`) and relative
  ground truth are always fitted by least squares in disparity (`ALIGN_DISPARITY`), and an
  explicit `align` is refused for them;
- a prediction store's pixels without a label are left out of the scores (the ground truth's
  mask is narrowed to them); `coverage` says what share of the ground truth's labelled pixels
  the prediction covers (1 for a model).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from evaluation.metrics import ALIGNMENTS, FIGURE_NAMES, TASKS, Meter, MetricConfig
from evaluation.protocols import PROTOCOLS, Protocol, get_protocol
from spherical.ade20k import ADE20K_CLASSES
from storage.labelstore import STATUS_OK, LabelStore, StoreError, StoreSpec
from trainer.data import PanoramaDataset, Sample, StoreInfo, init_data_worker, to_device

# The alignment reported when depth is fitted in disparity (relative predictions or targets):
# least squares a·p + b ≈ 1/d* per panorama (`evaluation.metrics.depth_pairs`).
ALIGN_DISPARITY = "disparity_lsq"
# `--checkpoint` names of a run folder's models, besides a step number.
RUN_MODELS = ("best", "final")
PRECISIONS = ("auto", "fp32", "bf16")

ProgressCallback = Callable[[int, int], None]  # (panoramas done, total)


class EvaluationError(ValueError):
    """Input that cannot be scored as asked: not a model, not a store, no task or panorama in
    common, class lists without a mapping, an unknown protocol or alignment. One line."""


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True)
class EvaluationResult:
    """The figures of a prediction (a model or a store) against a ground-truth store.

    Fields:
        model: the model folder evaluated; for `compare`, the model a prediction store names
            in its source (None when it names none).
        step: that model's training step (None when unknown).
        store: the ground-truth store's URL.
        prediction_store: the prediction store's URL (`compare`), else None.
        protocol: the protocol's name (`evaluation.protocols.PROTOCOLS`).
        align: the depth alignment used: none | median | lsq | ALIGN_DISPARITY.
        height: the ERP height everything was scored at (maps H x 2H).
        tasks: the tasks scored.
        panoramas: the panoramas scored (read and matched).
        task_panoramas: per task, the panoramas with at least one scored pixel.
        figures: {aggregation: {figure: value}} for pooled, per_panorama and sphere
            (`Meter.figures`); NaN where nothing was scored.
        class_iou: {class name: IoU} of the counted classes, pooled; {} without semantics.
        class_names: the class list semantic ids are scored in.
        class_mapping: "identity", or the mapping table used (e.g. "ADE20K-150 -> NYU40
            (ade20k_to_nyu40.csv)").
        ignored_classes: predicted classes without a counterpart (scored as misses).
        coverage: per task, the share of the ground truth's labelled pixels that the
            prediction covers (pixels it leaves out are not scored); NaN without any.
        rows: one row per scored panorama: {"pano_id", figure: value, ...}.
        unreadable: panoramas whose arrays could not be read (not scored).
        only_in_prediction, only_in_ground_truth: `compare`: ok panoramas of one store whose
            pano_id the other lacks.
        notes: what was decided for the user (resizing, defaults), one line each.
    """

    model: str | None
    step: int | None
    store: str
    prediction_store: str | None
    protocol: str
    align: str
    height: int
    tasks: tuple[str, ...]
    panoramas: int
    task_panoramas: dict[str, int]
    figures: dict[str, dict[str, float]]
    class_iou: dict[str, float]
    class_names: tuple[str, ...]
    class_mapping: str
    ignored_classes: tuple[str, ...]
    coverage: dict[str, float]
    rows: tuple[dict[str, Any], ...]
    unreadable: tuple[str, ...] = ()
    only_in_prediction: int = 0
    only_in_ground_truth: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def figure_names(self) -> list[str]:
        """The figures of the scored tasks, in `evaluation.metrics.FIGURE_NAMES` order."""
        return [name for task in self.tasks for name in FIGURE_NAMES[task]]

    def to_json(self) -> dict[str, Any]:
        """What `--json` prints (NaN stays float NaN here; `storage.labelstore.jsonable` makes
        it null): model, step, store, protocol, align, panoramas, figures, class_iou,
        ignored_classes, and the rest of the fields but the rows."""
        out: dict[str, Any] = {
            "model": self.model,
            "step": self.step,
            "store": self.store,
            "protocol": self.protocol,
            "align": self.align,
            "panoramas": self.panoramas,
            "figures": self.figures,
            "class_iou": self.class_iou,
            "ignored_classes": list(self.ignored_classes),
            "prediction_store": self.prediction_store,
            "height": self.height,
            "tasks": list(self.tasks),
            "task_panoramas": self.task_panoramas,
            "class_mapping": self.class_mapping,
            "coverage": self.coverage,
            "unreadable": list(self.unreadable),
            "notes": list(self.notes),
        }
        if self.prediction_store is not None:
            out["only_in_prediction"] = self.only_in_prediction
            out["only_in_ground_truth"] = self.only_in_ground_truth
        return out


def write_per_panorama_csv(result: EvaluationResult, path: Path | str) -> Path:
    """One row per scored panorama: pano_id and every figure of the scored tasks (full
    precision; "nan" where a panorama has no scored pixel of a task). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = result.figure_names()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pano_id", *names])
        for row in result.rows:
            writer.writerow([row["pano_id"], *(repr(float(row[n])) for n in names)])
    return path


# ---------------------------------------------------------------------- how to score
@dataclass(frozen=True)
class Scoring:
    """What is scored and how, decided from the protocol and both sides before reading.

    Fields:
        tasks: the tasks scored, in TASKS order.
        config: the Meter's configuration.
        height: the ERP height scored at.
        pred_depth_metric: the prediction's depth is metric range (else disparity).
        align: the alignment reported (`EvaluationResult.align`).
        class_names: the class list of the scored semantic ids.
        lookup: (256,) int64 from predicted ids to scored ids (the protocol's mapping), None
            for the identity.
        class_mapping, ignored_classes: as in `EvaluationResult`.
    """

    tasks: tuple[str, ...]
    config: MetricConfig
    height: int
    pred_depth_metric: bool
    align: str
    class_names: tuple[str, ...]
    lookup: Tensor | None
    class_mapping: str
    ignored_classes: tuple[str, ...]


def _summary(names: Sequence[str]) -> str:
    return f"{len(names)} classes ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def plan_scoring(
    protocol: Protocol,
    truth: StoreSpec,
    pred_tasks: Sequence[str],
    pred_class_names: Sequence[str],
    pred_depth_kind: str | None,
    align: str | None,
    pred_label: str,
) -> Scoring:
    """Decide what is scored (module doc) for a prediction with `pred_tasks`, classes
    `pred_class_names` and depth kind `pred_depth_kind` against a ground-truth store of spec
    `truth`; `pred_label` names the prediction in errors ("the model", "PRED_STORE").

    Raises:
        EvaluationError: no task in common, class lists without a mapping, an alignment that
            does not apply or is unknown.
    """
    if align is not None and align not in ALIGNMENTS:
        raise EvaluationError(f"unknown alignment {align!r}; choose one of: {', '.join(ALIGNMENTS)}")
    truth_tasks = [t for t in TASKS if t in truth.tasks]
    if not truth_tasks:
        raise EvaluationError(f"the ground truth has none of the tasks the protocol scores ({', '.join(TASKS)})")
    tasks = tuple(t for t in truth_tasks if t in pred_tasks)
    if not tasks:
        raise EvaluationError(
            f"no task in common: the ground truth has {', '.join(truth_tasks)}, "
            f"{pred_label} has {', '.join(pred_tasks) or 'none'}"
        )
    config = protocol.metric_config(tasks, align or "none")
    class_names: tuple[str, ...] = ()
    lookup, class_mapping, ignored = None, "identity", ()
    if "semantic" in tasks:
        truth_names, pred_names = tuple(truth.class_names), tuple(pred_class_names)
        if truth_names == pred_names:
            counted = protocol.counted_classes if truth_names == protocol.class_names else None
            config = dataclasses.replace(config, num_classes=len(truth_names), counted_classes=counted)
        elif pred_names == ADE20K_CLASSES and truth_names == protocol.class_names and protocol.mapping_file:
            lookup = protocol.class_lookup()
            class_mapping = f"ADE20K-150 -> {_class_list_name(truth_names)} ({protocol.mapping_file})"
            ignored = tuple(protocol.ignored_classes())
        else:
            raise EvaluationError(
                f"class lists differ: {pred_label} has {_summary(pred_names)}, the ground truth has "
                f"{_summary(truth_names)}; {_mapping_hint(pred_names, truth_names, protocol)}"
            )
        class_names = truth_names
    pred_metric = pred_depth_kind != "relative_disparity"
    truth_metric = truth.depth_kind == "metric_range"
    reported = align or "none"
    if "depth" in tasks and not (pred_metric and truth_metric):
        if align is not None:
            relative = pred_label if not pred_metric else "the ground truth"
            raise EvaluationError(
                f"--align {align} applies to metric depth; {relative} holds relative disparity, which is "
                f"always fitted by least squares in disparity ({ALIGN_DISPARITY})"
            )
        reported = ALIGN_DISPARITY
    height = protocol.erp_height or truth.erp_height
    return Scoring(tasks, config, height, pred_metric, reported, class_names, lookup, class_mapping, ignored)


def _class_list_name(names: tuple[str, ...]) -> str:
    from evaluation.classes import NYU40_CLASSES, STANFORD2D3D_CLASSES

    known = {ADE20K_CLASSES: "ADE20K-150", NYU40_CLASSES: "NYU40", STANFORD2D3D_CLASSES: "Stanford2D3D-13"}
    return known.get(names, f"{len(names)} classes")


def _mapping_hint(pred: tuple[str, ...], truth: tuple[str, ...], protocol: Protocol) -> str:
    """What the user can do about two class lists that `protocol` does not relate."""
    fitting = [p.name for p in PROTOCOLS.values() if p.class_names == truth and p.mapping_file]
    if pred == ADE20K_CLASSES and fitting:
        return f"--protocol {' or '.join(fitting)} maps ADE20K-150 to the ground truth's classes"
    return f"protocol {protocol.name} maps ADE20K-150 to {_class_list_name(protocol.class_names)} only"


# ---------------------------------------------------------------------- stores and models
def open_store(url: str, role: str = "ground truth") -> tuple[StoreSpec, tuple[tuple[int, str], ...]]:
    """The spec and the ok panoramas (index, pano_id) of the store at `url`; `role` names it
    in errors.

    Raises:
        EvaluationError: the store does not exist, is not a label store, or has no ok panorama.
    """
    try:
        store = LabelStore.open(url)
        rows = store.rows()
    except (StoreError, OSError, ValueError) as err:
        text = str(err) if url in str(err) else f"{url}: {err}"
        raise EvaluationError(f"{role} {text}") from None
    ok = tuple((int(r["index"]), str(r["pano_id"])) for r in rows if r["status"] == STATUS_OK)
    if not ok:
        raise EvaluationError(f"{role} {url}: no panorama with status ok")
    return store.spec, ok


def resolve_model_dir(path: Path | str, checkpoint: str | None = None) -> Path:
    """The saved-model folder that MODEL and `--checkpoint` name.

    A saved model (config.json + model.safetensors, as `trainer.checkpoint.save_model` writes)
    is itself; a run folder (`trainer.runs`) gives its best/, else final/, or with `checkpoint`
    its "best", its "final" or step N's `checkpoints/step_<N>`.

    Raises:
        EvaluationError: neither a saved model nor a run folder, or no such checkpoint.
    """
    from trainer.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from trainer.runs import CHECKPOINTS, RunFolder
    from trainer.runs import CONFIG_FILE as RUN_CONFIG_FILE

    path = Path(path)

    def is_model(folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()

    if not path.is_dir():
        raise EvaluationError(f"{path}: no such model folder")
    if is_model(path):
        if checkpoint is not None:
            raise EvaluationError(f"{path} is a saved model, not a run folder: --checkpoint picks a model inside a run")
        return path
    run = RunFolder(path)
    if not any((path / name).exists() for name in (RUN_CONFIG_FILE, *RUN_MODELS, CHECKPOINTS)):
        raise EvaluationError(
            f"{path} is not a model: neither a saved BridgeNet ({CONFIG_FILE} and {WEIGHTS_FILE}) "
            f"nor a training run ({RUN_CONFIG_FILE}, best/, final/)"
        )
    steps = [int(p.name.split("_")[-1]) for p in run.complete_checkpoints()]
    available = ", ".join([n for n in RUN_MODELS if is_model(path / n)] + [str(s) for s in steps]) or "none"
    if checkpoint is None:
        for name in RUN_MODELS:
            if is_model(path / name):
                return path / name
        raise EvaluationError(f"run {path} has no best/ or final/ model yet; --checkpoint picks one of: {available}")
    if checkpoint in RUN_MODELS:
        chosen = path / checkpoint
    elif checkpoint.isdigit():
        chosen = run.checkpoint_dir(int(checkpoint))
    else:
        raise EvaluationError(f"--checkpoint must be best, final or a step number, got {checkpoint!r}")
    if not is_model(chosen):
        raise EvaluationError(f"run {path} has no checkpoint {checkpoint}; it has: {available}")
    return chosen


def _device(device: str | None) -> torch.device:
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise EvaluationError(f"--device {device}: {err}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device}: no CUDA device here")
    return chosen


def _loader(dataset: Dataset, batch_size: int, data_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=data_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=init_data_worker if data_workers > 0 else None,
    )


# ---------------------------------------------------------------------- accumulating
class _Accumulator:
    """A Meter plus what the result reports besides its figures (coverage, rows, unreadable)."""

    def __init__(self, scoring: Scoring, device: torch.device) -> None:
        self.scoring = scoring
        self.meter = Meter(scoring.config, device=device)
        self.lookup = None if scoring.lookup is None else scoring.lookup.to(device)
        self.covered = torch.zeros(len(scoring.tasks), dtype=torch.float64, device=device)
        self.labelled = torch.zeros(len(scoring.tasks), dtype=torch.float64, device=device)
        self.rows: list[dict[str, Any]] = []
        self.unreadable: list[str] = []

    def add(
        self,
        pred: dict[str, Tensor],
        pred_valid: dict[str, Tensor],
        target: dict[str, Any],
        pano_ids: Sequence[str],
        readable: Tensor,
    ) -> None:
        """Score a batch.

        Args:
            pred: "depth" (B,H,W), "semantic" (B,H,W) predicted class ids, "normals" (B,3,H,W)
                world frame, for the scored tasks, on the device.
            pred_valid: per scored task (B,H,W) bool, where the prediction has a value.
            target: a batch of `trainer.data` items (the ground truth), on the device.
            readable: (B,) bool, False where either side could not be read.
        """
        target = dict(target)
        for k, task in enumerate(self.scoring.tasks):
            labelled = target[f"{task}_mask"] & readable[:, None, None]
            covered = labelled & pred_valid[task]
            target[f"{task}_mask"] = covered
            self.labelled[k] += labelled.sum()
            self.covered[k] += covered.sum()
        pred = {t: pred[t] for t in self.scoring.tasks}
        if self.lookup is not None and "semantic" in pred:
            pred["semantic"] = self.lookup[pred["semantic"].long()]  # ADE20K-150 ids -> the protocol's
        rows = self.meter.update(pred, target, list(pano_ids), self.scoring.pred_depth_metric)
        for row, ok in zip(rows, readable.tolist(), strict=True):
            if ok:
                self.rows.append(row)
            else:
                self.unreadable.append(row["pano_id"])

    def result(self, **fields: Any) -> EvaluationResult:
        s = self.scoring
        class_iou: dict[str, float] = {}
        if "semantic" in s.tasks:
            iou = self.meter.class_iou("pooled").tolist()
            class_iou = {name: v for name, v in zip(s.class_names, iou, strict=True) if not math.isnan(v)}
        labelled, covered = self.labelled.tolist(), self.covered.tolist()
        return EvaluationResult(
            align=s.align,
            height=s.height,
            tasks=s.tasks,
            panoramas=len(self.rows),
            task_panoramas=self.meter.counts(),
            figures=self.meter.figures(),
            class_iou=class_iou,
            class_names=s.class_names,
            class_mapping=s.class_mapping,
            ignored_classes=s.ignored_classes,
            coverage={t: c / n if n > 0 else math.nan for t, c, n in zip(s.tasks, covered, labelled, strict=True)},
            rows=tuple(self.rows),
            unreadable=tuple(self.unreadable),
            **fields,
        )


def _resize_note(what: str, height: int, scored: int, protocol: Protocol) -> str | None:
    if height == scored:
        return None
    why = f"protocol {protocol.name}'s resolution" if protocol.erp_height else "the ground truth's resolution"
    return f"{what} resized from {height}x{2 * height} to {scored}x{2 * scored} ({why})"  # H x W


def _protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return get_protocol(protocol)
    except ValueError as err:
        raise EvaluationError(str(err)) from None


# ---------------------------------------------------------------------- evaluate
def _finite(task: str, value: Tensor) -> Tensor:
    """(B,H,W) bool: where a model's prediction of `task` has a value (every pixel, unless a
    forward pass produced NaN)."""
    if task == "normals":
        return torch.isfinite(value).all(1)  # (B,3,H,W) -> (B,H,W)
    return torch.isfinite(value) if value.is_floating_point() else torch.ones_like(value, dtype=torch.bool)


def evaluate_model(
    model: Path | str,
    ground_truth: str,
    protocol: str | Protocol = "synth",
    align: str | None = None,
    checkpoint: str | None = None,
    batch_size: int = 4,
    device: str | None = None,
    precision: str = "auto",
    data_workers: int = 0,
    on_progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Predict every ok panorama of the `ground_truth` store with a trained BridgeNet and score
    the predictions under `protocol` (module doc).

    Args:
        model: a run folder or a saved model folder (`resolve_model_dir` with `checkpoint`).
        ground_truth: a store with RGB (path or fsspec URL), usually of kind ground_truth.
        protocol: a name of `evaluation.protocols.PROTOCOLS`, or a `Protocol` of one's own.
        align: none | median | lsq for metric depth; None: none for a metric model, least
            squares in disparity for a model whose depth kind is relative_disparity.
        batch_size: panoramas per forward pass.
        device: torch device; None: CUDA when there is one.
        precision: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16.
        data_workers: DataLoader processes reading the store.
        on_progress: called with (panoramas done, total) once every input is checked (0 done)
            and after each batch.

    Raises:
        EvaluationError: bad input (`plan_scoring`, `resolve_model_dir`, `open_store`).
    """
    from trainer.checkpoint import load_model, read_model_info
    from trainer.inference import predict

    chosen = _protocol(protocol)
    if precision not in PRECISIONS:
        raise EvaluationError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    model_dir = resolve_model_dir(model, checkpoint)
    try:
        info = read_model_info(model_dir)
        network, step = load_model(model_dir)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise EvaluationError(f"{model_dir} is not a loadable BridgeNet: {str(err).splitlines()[0]}") from None
    spec, panoramas = open_store(ground_truth)
    if not spec.source.get("has_rgb", True):
        raise EvaluationError(f"ground truth {ground_truth}: the store has no RGB images (its dataset ships none)")
    notes: list[str] = []
    class_names = info.get("class_names")
    if not class_names and "semantic" in network.config.tasks:
        if network.config.num_classes != len(ADE20K_CLASSES):
            raise EvaluationError(f"{model_dir} records no class names and does not predict the 150 ADE20K classes")
        class_names = ADE20K_CLASSES
        notes.append("the model records no class names: its 150 classes are read as ADE20K-150")
    depth_kind = info.get("depth_kind")
    if depth_kind is None and "depth" in network.config.tasks:
        depth_kind = "metric_range"
        notes.append("the model records no depth kind: its depth is scored as metric range")
    scoring = plan_scoring(chosen, spec, network.config.tasks, tuple(class_names or ()), depth_kind, align, "the model")
    notes += [n for n in (_resize_note("ground truth", spec.erp_height, scoring.height, chosen),) if n]
    if info.get("height") and info["height"] != scoring.height:
        notes.append(f"the model trained at height {info['height']} predicts at {scoring.height}")

    target_device = _device(device)
    network = network.to(target_device).eval()
    store = StoreInfo(url=ground_truth, spec=spec, panoramas=panoramas, kind=spec.kind)
    samples = [Sample(0, index, pano_id) for index, pano_id in panoramas]
    dataset = PanoramaDataset([store], samples, scoring.height, scoring.tasks)
    accumulator = _Accumulator(scoring, target_device)
    done = 0
    if on_progress is not None:
        on_progress(0, len(samples))
    for batch in _loader(dataset, batch_size, data_workers, target_device):
        batch = to_device(batch, target_device)
        pred = predict(network, batch["rgb"], precision)
        valid = {t: _finite(t, pred[t]) for t in scoring.tasks}
        accumulator.add(pred, valid, batch, batch["pano_id"], batch["readable"])
        done += len(batch["pano_id"])
        if on_progress is not None:
            on_progress(done, len(samples))
    return accumulator.result(
        model=str(model_dir),
        step=step,
        store=ground_truth,
        prediction_store=None,
        protocol=chosen.name,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------- compare
class _PairDataset(Dataset):
    """Matched panoramas of two stores: item i = {"pred": item, "gt": item} (trainer.data items)."""

    def __init__(self, pred: PanoramaDataset, truth: PanoramaDataset) -> None:
        assert len(pred) == len(truth), "pairs need as many prediction as ground-truth samples"
        self.pred, self.truth = pred, truth

    def __len__(self) -> int:
        return len(self.pred)

    def __getitem__(self, i: int) -> dict[str, dict[str, Any]]:
        return {"pred": self.pred[i], "gt": self.truth[i]}


def compare_stores(
    prediction: str,
    ground_truth: str,
    protocol: str | Protocol = "synth",
    align: str | None = None,
    batch_size: int = 4,
    device: str | None = None,
    data_workers: int = 0,
    on_progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Score the store `prediction` (labels, predictions, any store) against the store
    `ground_truth` under `protocol` (a name or a `Protocol`), panoramas matched by pano_id
    (module doc).

    The prediction's depth kind decides its alignment as for a model: a relative_disparity
    store is fitted in disparity. Its pixels without a label are not scored (`coverage`).

    Raises:
        EvaluationError: bad input, or no panorama matched.
    """
    chosen = _protocol(protocol)
    pred_spec, pred_panoramas = open_store(prediction, role="scored store")
    truth_spec, truth_panoramas = open_store(ground_truth)
    truth_index = dict((pano_id, index) for index, pano_id in truth_panoramas)
    pairs = [(index, pano_id, truth_index[pano_id]) for index, pano_id in pred_panoramas if pano_id in truth_index]
    if not pairs:
        raise EvaluationError(
            f"no panorama matches by pano_id: {prediction} has {len(pred_panoramas)} ok panoramas, "
            f"{ground_truth} has {len(truth_panoramas)}, none in common"
        )
    scoring = plan_scoring(
        chosen, truth_spec, pred_spec.tasks, pred_spec.class_names, pred_spec.depth_kind, align, "the scored store"
    )
    notes = [
        n
        for n in (
            _resize_note("ground truth", truth_spec.erp_height, scoring.height, chosen),
            _resize_note("the scored store", pred_spec.erp_height, scoring.height, chosen),
        )
        if n
    ]
    target_device = _device(device)
    pred_store = StoreInfo(url=prediction, spec=pred_spec, panoramas=pred_panoramas, kind=pred_spec.kind)
    truth_store = StoreInfo(url=ground_truth, spec=truth_spec, panoramas=truth_panoramas, kind=truth_spec.kind)
    dataset = _PairDataset(
        PanoramaDataset([pred_store], [Sample(0, i, p) for i, p, _ in pairs], scoring.height, scoring.tasks),
        PanoramaDataset([truth_store], [Sample(0, j, p) for _, p, j in pairs], scoring.height, scoring.tasks),
    )
    accumulator = _Accumulator(scoring, target_device)
    done = 0
    if on_progress is not None:
        on_progress(0, len(pairs))
    for batch in _loader(dataset, batch_size, data_workers, target_device):
        pred_batch, truth_batch = batch["pred"], batch["gt"]
        scored, target = to_device(pred_batch, target_device), to_device(truth_batch, target_device)
        pred = {t: scored[t] for t in scoring.tasks}
        valid = {t: scored[f"{t}_mask"] for t in scoring.tasks}
        readable = scored["readable"] & target["readable"]
        accumulator.add(pred, valid, target, truth_batch["pano_id"], readable)
        done += len(truth_batch["pano_id"])
        if on_progress is not None:
            on_progress(done, len(pairs))
    source = pred_spec.source
    step = source.get("step")
    return accumulator.result(
        model=str(source["model"]) if source.get("model") is not None else None,
        step=int(step) if step is not None else None,
        store=ground_truth,
        prediction_store=prediction,
        protocol=chosen.name,
        only_in_prediction=len(pred_panoramas) - len(pairs),
        only_in_ground_truth=len(truth_panoramas) - len(pairs),
        notes=tuple(notes),
    )


__all__ = [
    "ALIGN_DISPARITY",
    "EvaluationError",
    "EvaluationResult",
    "Scoring",
    "compare_stores",
    "evaluate_model",
    "open_store",
    "plan_scoring",
    "resolve_model_dir",
    "write_per_panorama_csv",
]
