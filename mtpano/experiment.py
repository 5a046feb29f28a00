"""`mtpano experiment`: does training on mtpano's labels match training on ground truth?

One declarative config (`ExperimentConfig`, YAML or JSON; examples in experiments/) names
synthetic rooms, teacher error profiles, arms, ablations, a training budget and seeds. The
runner renders training and held-out test rooms (disjoint seeds), makes every training store
(ground truth with `mtpano import`, labels with `mtpano labels`' pipeline and simulated
teachers), trains the identical network on each (`trainer.train`), scores every run's final
model on the test rooms' ground truth (`evaluation.evaluate.evaluate_model`), and writes
results.json, results.md and index.html.

Arms:
    gt                 the training rooms' ground truth;
    labels             mtpano labels of the same rooms (simulated teachers of a profile);
    labels-unaligned   the same teachers without the cross-patch depth alignment;
    teacher-patches    the teachers' patch outputs re-projected without fusion: each pixel
                       from the patch that sees it nearest its centre, no blending, no
                       confidence.
Ablations: the `labels` arm of the main profile with one switch off (`ABLATIONS`).

DIR/ holds data/ (rooms), stores/, runs/<row>/seed_<s>/ (trainer run folders, each with its
evaluation.json), previews/ and the results. Every stage skips what is already done, so
rerunning the command after a crash redoes only what is missing (a killed training run
resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("gt", "labels", "labels-unaligned", "teacher-patches")
# Each ablation: the TrainConfig fields it changes (model / loss / augment overrides).
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "one-group": {"model": {"dual_groups": False, "gradient_truncation": False}},
    "no-gradient-truncation": {"model": {"gradient_truncation": False}},
    "no-geometry-modulation": {"model": {"geometry_modulation": False}},
    "no-erp-mixer": {"model": {"erp_mixer": False}},
    "zero-padding": {"model": {"padding": "zeros"}},
    "no-aux-tasks": {"model": {"aux_tasks": False}},
    "no-confidence-weighting": {"loss": {"confidence_power": 0.0}},
    "no-solid-angle-weighting": {"loss": {"solid_angle": False}},
    "no-yaw-augmentation": {"augment": {"yaw": False}},
}
# The figures of the tables: (name, header, format, lower is better).
TABLE_FIGURES = (
    ("depth_absrel", "depth AbsRel", "{:.4f}", True),
    ("depth_delta1", "depth δ1", "{:.3f}", False),
    ("normals_mean_deg", "normals mean (°)", "{:.2f}", True),
    ("normals_within_11_25", "normals <11.25°", "{:.3f}", False),
    ("semantic_miou", "semantic mIoU", "{:.3f}", False),
)
TEST_FIRST_SEED = 100_000  # test rooms' seeds start here: disjoint from the training rooms'
TASK_TEACHERS = ("depth", "semantic", "normals")


class ExperimentError(ValueError):
    """An experiment config that cannot run (unknown arm or ablation, bad field)."""


@dataclass(frozen=True)
class ExperimentConfig:
    """What an experiment runs (one comment per field; see experiments/*.yaml)."""

    # Name shown in the results.
    name: str
    # Synthetic training rooms (seeds 0..n-1) and held-out test rooms (seeds TEST_FIRST_SEED..).
    train_rooms: int
    test_rooms: int
    # ERP height the rooms are rendered at (the panoramas the teachers see).
    render_height: int
    # Height of every store (labels and ground truth); the network trains at train["height"].
    label_height: int
    # Patch side of the teachers' patches, and the patch layout.
    patch_size: int
    layout: str = "icosahedron"
    # Teacher error profiles: name -> {"depth", "semantic", "normals": `sim:` teacher specs}.
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)
    # The profiles the label arms run with (all of `profiles` when empty).
    run_profiles: tuple[str, ...] = ()
    # The profile the ablations run on.
    main_profile: str = "mild"
    # Arms of ARMS to run.
    arms: tuple[str, ...] = ARMS
    # Ablations of ABLATIONS to run on the labels arm of the main profile.
    ablations: tuple[str, ...] = ()
    # Training seeds: every row runs once per seed.
    seeds: tuple[int, ...] = (0, 1)
    # TrainConfig fields every run shares (preset, height, steps, batch, lr, ...).
    train: dict[str, Any] = field(default_factory=dict)
    # Evaluation protocol of the test rooms.
    protocol: str = "synth"
    # Test panoramas drawn with every arm's predictions in index.html.
    previews: int = 2

    def __post_init__(self) -> None:
        for name in ("arms", "ablations", "seeds", "run_profiles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ExperimentError(f"unknown arm(s) {unknown}; arms are {list(ARMS)}")
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ExperimentError(f"unknown ablation(s) {unknown}; ablations are {list(ABLATIONS)}")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ExperimentError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.train_rooms < 1 or self.test_rooms < 1:
            raise ExperimentError("train_rooms and test_rooms must be >= 1")
        label_arms = [a for a in self.arms if a != "gt"]
        if (label_arms or self.ablations) and not self.profiles:
            raise ExperimentError("the label arms need at least one teacher profile under `profiles`")
        for name, teachers in self.profiles.items():
            missing = [t for t in TASK_TEACHERS if t not in teachers]
            if missing:
                raise ExperimentError(f"profile {name!r} names no teacher for {missing}")
        for name in (*self.run_profiles, *([self.main_profile] if self.ablations else [])):
            if name not in self.profiles:
                raise ExperimentError(f"profile {name!r} is not defined; profiles: {sorted(self.profiles)}")
        if self.ablations and "labels" not in self.arms:
            raise ExperimentError("ablations run on the labels arm: add labels to arms")
        self.train_config(0)  # refuses bad training fields now, not after hours

    @property
    def label_profiles(self) -> tuple[str, ...]:
        return self.run_profiles or tuple(self.profiles)

    def train_config(self, seed: int, ablation: str | None = None) -> Any:
        """The TrainConfig of one run: the shared fields, the seed, every panorama for training
        (scoring is on the held-out rooms), the ablation's switch."""
        from trainer.config import ConfigError, TrainConfig

        fields = dict(self.train)
        preset = fields.pop("preset", "tiny")
        changes = {**fields, "seed": seed, "val_fraction": 0.0}
        for key, overrides in ABLATIONS.get(ablation or "", {}).items():
            changes[key] = {**changes.get(key, {}), **overrides}
        try:
            return TrainConfig.from_preset(preset).replace(**changes)
        except ConfigError as err:
            raise ExperimentError(f"train: {err}") from None


def read_experiment_config(path: Path | str) -> ExperimentConfig:
    """An ExperimentConfig from a YAML (.yaml, .yml) or JSON file."""
    from trainer.config import ConfigError, build_config, read_config_file

    try:
        return build_config(ExperimentConfig, read_config_file(path), str(path))
    except ConfigError as err:
        raise ExperimentError(str(err)) from None


# ---------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """One line of the results: an arm (with its teacher profile) and maybe an ablation."""

    arm: str
    profile: str | None
    ablation: str | None = None

    @property
    def name(self) -> str:
        base = self.arm if self.profile is None else f"{self.arm}-{self.profile}"
        return base if self.ablation is None else f"{base}+{self.ablation}"

    @property
    def store(self) -> str:
        """The training store's folder name under DIR/stores."""
        return "gt-train" if self.arm == "gt" else f"{self.arm}-{self.profile}"


def experiment_rows(config: ExperimentConfig) -> list[Row]:
    """Every row of an experiment: the arms (label arms once per profile), then the ablations."""
    rows = [Row("gt", None)] if "gt" in config.arms else []
    for profile in config.label_profiles:
        rows += [Row(arm, profile) for arm in config.arms if arm != "gt"]
    rows += [Row("labels", config.main_profile, ablation) for ablation in config.ablations]
    return rows


# ---------------------------------------------------------------------- stages
@dataclass
class ExperimentPaths:
    root: Path

    @property
    def train_data(self) -> Path:
        return self.root / "data" / "train"

    @property
    def test_data(self) -> Path:
        return self.root / "data" / "test"

    def store(self, name: str) -> Path:
        return self.root / "stores" / name

    def run(self, row: Row, seed: int) -> Path:
        return self.root / "runs" / row.name / f"seed_{seed}"


Notify = Callable[[str], None]


def render_rooms(folder: Path, seeds: Sequence[int], height: int, notify: Notify) -> None:
    """`mtpano synth` of `seeds` into `folder`, skipping rooms already written (resumable)."""
    from synthetic.dataset import pano_name, write_dataset

    missing = [s for s in seeds if not (folder / "gt" / f"{pano_name(s)}_semantic.png").is_file()]
    if missing:
        notify(f"rendering {len(missing)} rooms at {2 * height}x{height} into {folder}")
        write_dataset(folder, missing, height=height)


def import_truth(folder: Path, store: Path, height: int, notify: Notify) -> str:
    """The ground truth of a rooms folder as a store (`mtpano import --format synth`)."""
    from storage.importers import ImportConfig, import_dataset

    summary = import_dataset(folder, str(store), ImportConfig(format="synth", height=height))
    if summary.imported:
        notify(f"imported the ground truth of {summary.imported} rooms into {store}")
    if summary.failed:
        raise ExperimentError(f"import of {folder} failed for {summary.failed[0][0]}: {summary.failed[0][1]}")
    return str(store)


def label_rooms(config: ExperimentConfig, arm: str, profile: str, images: Path, store: Path, notify: Notify) -> str:
    """Label the training rooms for a label arm (in this process, resumable)."""
    from pipeline.config import LabelConfig, RunOptions
    from pipeline.fusion import FusionConfig
    from pipeline.run import run_labels

    if arm == "labels":
        fusion = FusionConfig()
    elif arm == "labels-unaligned":
        fusion = FusionConfig(align_metric_depth=False)
    else:
        # Each pixel from one patch as the teacher saw it: no blending, no alignment, no confidence.
        fusion = FusionConfig(blend="nearest", align_metric_depth=False, single_view_agreement=1.0)
    teachers = config.profiles[profile]
    label_config = LabelConfig(
        depth_teacher=teachers["depth"],
        semantic_teacher=teachers["semantic"],
        normal_teacher=teachers["normals"],
        layout=config.layout,
        patch_size=config.patch_size,
        erp_height=config.label_height,
        fusion=fusion,
    )
    summary = run_labels(str(images), str(store), label_config, RunOptions(in_process=True))
    if summary.labelled:
        notify(f"labelled {summary.labelled} rooms for {arm} ({profile}) into {store}")
    if summary.failed:
        raise ExperimentError(f"labelling for {arm} failed for {summary.failed[0][0]}: {summary.failed[0][1]}")
    return str(store)


def evaluation_of(run_dir: Path, truth: str, protocol: str, steps: int) -> dict[str, Any]:
    """The run's final model scored on the test rooms; cached in evaluation.json."""
    from evaluation.evaluate import evaluate_model

    cache = run_dir / "evaluation.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("step") == steps:
            return cached
    result = evaluate_model(run_dir, truth, protocol=protocol, checkpoint="final")
    from storage.labelstore import jsonable

    payload = jsonable({"step": result.step, "figures": result.figures, "panoramas": result.panoramas})
    cache.write_text(json.dumps(payload, indent=1) + "\n")
    return json.loads(cache.read_text())


# ---------------------------------------------------------------------- summaries
def spread(values: Sequence[float]) -> float:
    """Half the range of the seeds' values (0 for one seed): how far a seed may land from
    the mean; a difference counts as real only beyond the two rows' spreads together."""
    finite = [v for v in values if math.isfinite(v)]
    return (max(finite) - min(finite)) / 2 if len(finite) > 1 else 0.0


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row: per figure {"mean", "spread", "n"} over its seeds."""
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_row.setdefault(run["row"], []).append(run)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row, members in by_row.items():
        names = sorted({k for m in members for k in m["metrics"]})
        out[row] = {}
        for name in names:
            values = [float(m["metrics"].get(name, math.nan)) for m in members]
            finite = [v for v in values if math.isfinite(v)]
            out[row][name] = {
                "mean": statistics.fmean(finite) if finite else math.nan,
                "spread": spread(values),
                "n": len(finite),
            }
    return out


def differs(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two rows' means differ by more than their spreads together."""
    return abs(a["mean"] - b["mean"]) > a["spread"] + b["spread"]


def ratio(value: float, reference: float) -> float:
    return value / reference if reference and math.isfinite(reference) else math.nan


def within(value: float, reference: float, lower_is_better: bool, tolerance: float = 0.10) -> bool:
    """Whether `value` is within `tolerance` (relative) of `reference` or better."""
    if not (math.isfinite(value) and math.isfinite(reference)):
        return False
    return value <= reference * (1 + tolerance) if lower_is_better else value >= reference * (1 - tolerance)


def _cell(stats: Mapping[str, float] | None, fmt: str) -> str:
    if stats is None or not math.isfinite(stats["mean"]):
        return "–"
    text = fmt.format(stats["mean"])
    return text + (f" ± {fmt.format(stats['spread'])}" if stats["n"] > 1 else "")


@dataclass(frozen=True)
class Section:
    """One table of the results, drawn as Markdown (results.md) and HTML (index.html)."""

    title: str
    note: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", *([self.note, ""] if self.note else [])]
        lines += ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def results_sections(config: ExperimentConfig, rows: Sequence[Row], summary: Mapping[str, Any]) -> list[Section]:
    """The tables: the arms, their ratios to gt, labels against the unfused baselines on
    depth, the ablations."""
    header = ("row", *(h for _, h, _, _ in TABLE_FIGURES))
    arm_rows = [r for r in rows if r.ablation is None]

    def figures(stats: Mapping[str, Any], marks: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        cells = []
        for name, _, fmt, _ in TABLE_FIGURES:
            cell = _cell(stats.get(name), fmt)
            if marks is not None and name in stats and name in marks and differs(stats[name], marks[name]):
                cell += " *"
            cells.append(cell)
        return tuple(cells)

    seeds = f"{len(config.seeds)} seeds ({', '.join(map(str, config.seeds))}): mean ± spread (half the range)"
    sections = [
        Section(
            "Arms",
            f"Scored on {config.test_rooms} held-out rooms' ground truth, pooled over their pixels; {seeds}.",
            header,
            tuple((r.name, *figures(summary.get(r.name, {}))) for r in arm_rows),
        )
    ]
    gt = summary.get("gt")
    if gt is not None and len(arm_rows) > 1:
        ratios = []
        for r in arm_rows:
            if r.arm == "gt":
                continue
            stats, cells = summary.get(r.name, {}), []
            for name, _, _, lower in TABLE_FIGURES:
                if name not in stats or name not in gt:
                    cells.append("–")
                    continue
                value, reference = stats[name]["mean"], gt[name]["mean"]
                cells.append(f"{ratio(value, reference):.3f} {'✓' if within(value, reference, lower) else '✗'}")
            ratios.append((r.name, *cells))
        sections.append(Section("Ratio to gt", "✓: within 10% of gt, or better.", header, tuple(ratios)))
    comparisons = []
    for p in config.label_profiles:
        mine = summary.get(f"labels-{p}", {})
        for other in ("labels-unaligned", "teacher-patches"):
            theirs = summary.get(f"{other}-{p}", {})
            if "depth_absrel" not in mine or "depth_absrel" not in theirs:
                continue
            a, b = mine["depth_absrel"], theirs["depth_absrel"]
            verdict = ("labels better" if a["mean"] < b["mean"] else "labels worse") if differs(a, b) else "no"
            comparisons.append(
                (f"labels-{p} vs {other}-{p}", f"{_cell(a, '{:.4f}')} vs {_cell(b, '{:.4f}')}",
                 f"{_cell(mine.get('depth_delta1'), '{:.3f}')} vs {_cell(theirs.get('depth_delta1'), '{:.3f}')}",
                 verdict)
            )  # fmt: skip
    if comparisons:
        sections.append(
            Section(
                "labels against the unfused baselines (depth)",
                "A difference is real only when it exceeds the two rows' spreads together.",
                ("comparison", "AbsRel", "δ1", "difference beyond the spread"),
                tuple(comparisons),
            )
        )
    base = summary.get(f"labels-{config.main_profile}")
    ablations = [r for r in rows if r.ablation is not None]
    if ablations and base is not None:
        table = [(f"labels-{config.main_profile} (all on)", *figures(base))]
        table += [(str(r.ablation), *figures(summary.get(r.name, {}), base)) for r in ablations]
        sections.append(
            Section(
                "Ablations",
                f"labels-{config.main_profile} with one switch off; * = differs from all-on beyond the spread.",
                ("switched off", *header[1:]),
                tuple(table),
            )
        )
    return sections


def results_markdown(config: ExperimentConfig, sections: Sequence[Section]) -> str:
    return f"# {config.name}\n\n" + "\n".join(s.markdown() for s in sections)


# ---------------------------------------------------------------------- the runner
@dataclass
class ExperimentProgress:
    """Callbacks the command line fills in (all optional)."""

    notify: Notify = lambda message: None
    # (row name, seed, run index, total runs, total steps) when a run starts.
    run_started: Callable[[str, int, int, int, int], None] = lambda *args: None
    # Every record a run logs (trainer.train's `on_log`).
    on_log: Callable[[dict[str, Any]], None] = lambda record: None


def run_experiment(
    config: ExperimentConfig,
    out: Path | str,
    progress: ExperimentProgress | None = None,
    data_workers: int = 0,
) -> dict[str, Any]:
    """Run (or finish) every stage of `config` into `out`; returns results.json's content."""
    from mtpano import __version__
    from storage.labelstore import jsonable
    from trainer.config import TrainOptions
    from trainer.train import fit, plan_run

    progress = progress or ExperimentProgress()
    paths = ExperimentPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    config_file = paths.root / "experiment.json"
    recorded = dataclasses.asdict(config)
    if config_file.is_file() and json.loads(config_file.read_text()) != json.loads(json.dumps(recorded)):
        raise ExperimentError(f"{paths.root} holds an experiment with another config; choose another --out")
    config_file.write_text(json.dumps(recorded, indent=1) + "\n")

    # --- data and stores
    train_seeds = list(range(config.train_rooms))
    test_seeds = list(range(TEST_FIRST_SEED, TEST_FIRST_SEED + config.test_rooms))
    render_rooms(paths.train_data, train_seeds, config.render_height, progress.notify)
    render_rooms(paths.test_data, test_seeds, config.render_height, progress.notify)
    truth_test = import_truth(paths.test_data, paths.store("gt-test"), config.label_height, progress.notify)
    rows = experiment_rows(config)
    stores: dict[str, str] = {}
    for row in rows:
        if row.store in stores:
            continue
        if row.arm == "gt":
            stores[row.store] = import_truth(
                paths.train_data, paths.store(row.store), config.label_height, progress.notify
            )
        else:
            stores[row.store] = label_rooms(
                config, row.arm, row.profile, paths.train_data / "images", paths.store(row.store), progress.notify
            )

    # --- training and scoring
    runs: list[dict[str, Any]] = []
    total = len(rows) * len(config.seeds)
    for k, (row, seed) in enumerate((r, s) for r in rows for s in config.seeds):
        train_config = config.train_config(seed, row.ablation)
        run_dir = paths.run(row, seed)
        progress.run_started(row.name, seed, k, total, train_config.steps)
        plan = plan_run([stores[row.store]], [], run_dir, train_config)
        fit(plan, TrainOptions(data_workers=data_workers), on_log=progress.on_log)
        scored = evaluation_of(run_dir, truth_test, config.protocol, train_config.steps)
        runs.append(
            {
                "row": row.name,
                "arm": row.arm,
                "profile": row.profile,
                "ablation": row.ablation,
                "seed": seed,
                "run": str(run_dir.relative_to(paths.root)),
                "metrics": scored["figures"]["pooled"],
                "metrics_sphere": scored["figures"]["sphere"],
            }
        )

    # --- results
    summary = summarise(runs)
    results = jsonable(
        {
            "name": config.name,
            "mtpano_version": __version__,
            "config": recorded,
            "rows": [dataclasses.asdict(r) | {"name": r.name} for r in rows],
            "runs": runs,
            "summary": summary,
        }
    )
    (paths.root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    sections = results_sections(config, rows, summary)
    (paths.root / "results.md").write_text(results_markdown(config, sections))
    progress.notify("drawing the report")
    from mtpano.experiment_report import write_experiment_report

    write_experiment_report(config, paths, rows, runs, sections, truth_test)
    return results
