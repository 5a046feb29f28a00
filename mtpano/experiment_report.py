"""index.html of an experiment (`mtpano experiment`): the results tables, the training curves of
every arm, and held-out test panoramas predicted by each arm side by side.

The page is one self-contained file in the reports' style (`mtpano.report.html_page`), its
plots inline SVG (`mtpano.run_report.line_chart_svg`), its images PNG files under previews/.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtpano.experiment import ExperimentConfig, ExperimentPaths, Row, Section
from mtpano.report import facts_table, html_page, slug
from mtpano.run_report import Series, comparison_panels, legend_html, line_chart_svg
from mtpano.visualize import write_rgb
from trainer.train import meter_config

PANEL_HEIGHT = 96
EXTRA_CSS = """
.previews td { padding: 2px; vertical-align: top; }
.previews img { display: block; }
.previews th { writing-mode: horizontal-tb; font-weight: normal; text-align: left; }
"""


def sections_html(sections: Sequence[Section]) -> str:
    parts = []
    for section in sections:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in section.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in section.rows
        )
        parts.append(
            f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.note)}</p>"
            f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
    return "".join(parts)


def curves_html(paths: ExperimentPaths, rows: Sequence[Row], seed: int) -> str:
    """The total training loss of every row's run with `seed`, one line each."""
    series = []
    for row in rows:
        metrics = paths.run(row, seed) / "metrics.jsonl"
        if not metrics.is_file():
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        train = [r for r in records if r.get("kind") == "train"]
        series.append(Series(row.name, tuple(r["step"] for r in train), tuple(r["loss"]["total"] for r in train)))
    if not series:
        return ""
    svg = line_chart_svg(series, "total training loss per row", width=760, height=300)
    return (
        f"<h2>Training curves</h2><p>Total loss (weighted sum of every term) against the step, seed {seed}.</p>"
        f'<div class="card chart" data-chart="loss">{svg}{legend_html(series)}</div>'
    )


def previews_html(config: ExperimentConfig, paths: ExperimentPaths, rows: Sequence[Row], truth: str, seed: int) -> str:
    """The first test panoramas: ground truth, then each arm's prediction (final model, `seed`)."""
    from trainer.checkpoint import load_model
    from trainer.data import PanoramaDataset, Sample, open_store_info
    from trainer.inference import predict

    store = open_store_info(truth)
    chosen = store.panoramas[: config.previews]
    arms = [r for r in rows if r.ablation is None and (paths.run(r, seed) / "final").is_dir()]
    if not chosen or not arms:
        return ""
    height = config.train_config(seed).height
    tasks = store.spec.tasks
    dataset = PanoramaDataset([store], [Sample(0, i, p) for i, p in chosen], height, tasks)
    scoring = meter_config(tasks, store.spec.class_names)
    models = {r.name: load_model(paths.run(r, seed) / "final")[0].eval() for r in arms}
    folder = paths.root / "previews"
    table = []
    for k, (index, pano_id) in enumerate(chosen):
        item = dataset[k]
        name = slug(index, pano_id)
        cells: list[tuple[str, list[str]]] = []
        for row_name, model in models.items():
            pred = {t: v[0] for t, v in predict(model, item["rgb"][None]).items()}
            panels = comparison_panels(item, pred, scoring, PANEL_HEIGHT)
            if not cells:
                truth_files = [_save(folder / name / "rgb.png", panels["rgb"])]
                truth_files += [_save(folder / name / f"{t}_truth.png", panels[f"{t}_label"]) for t in tasks]
                cells.append(("ground truth", truth_files))
            files = [_save(folder / name / f"{t}_{row_name}.png", panels[f"{t}_prediction"]) for t in tasks]
            cells.append((row_name, files))
        for label, files in cells:
            images = "".join(
                f'<td><img src="{html.escape(str(f.relative_to(paths.root)))}" alt="{html.escape(label)}"></td>'
                for f in files
            )
            pad = "<td></td>" if label != "ground truth" else ""
            table.append(f"<tr><th>{html.escape(pano_id)}<br>{html.escape(label)}</th>{pad}{images}</tr>")
    head = "".join(f"<th>{t}</th>" for t in ("", "RGB", *tasks))
    return (
        f"<h2>Test panoramas</h2><p>Held-out rooms: the ground truth, then each arm's final model (seed {seed}).</p>"
        f'<table class="previews"><thead><tr>{head}</tr></thead><tbody>{"".join(table)}</tbody></table>'
    )


def _save(path: Path, image: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rgb(path, image)
    return path


def write_experiment_report(
    config: ExperimentConfig,
    paths: ExperimentPaths,
    rows: Sequence[Row],
    runs: Sequence[Mapping[str, Any]],
    sections: Sequence[Section],
    truth: str,
) -> Path:
    """Write DIR/index.html and its previews; returns the page's path."""
    seed = config.seeds[0]
    facts = facts_table(
        [
            ("rooms", f"{config.train_rooms} training, {config.test_rooms} held-out test ({config.protocol} protocol)"),
            ("panoramas", f"rendered {2 * config.render_height}x{config.render_height}, "
                          f"stores {2 * config.label_height}x{config.label_height}"),
            ("teachers", "; ".join(f"{p}: " + ", ".join(f"{t} {s}" for t, s in v.items())
                                   for p, v in config.profiles.items())),
            ("training", ", ".join(f"{k} {v}" for k, v in config.train.items())),
            ("runs", f"{len(runs)} ({len(rows)} rows x {len(config.seeds)} seeds)"),
        ]
    )  # fmt: skip
    with torch.no_grad():
        previews = previews_html(config, paths, rows, truth, seed)
    body = (
        f"<h1>{html.escape(config.name)}</h1>{facts}{sections_html(sections)}{curves_html(paths, rows, seed)}{previews}"
    )
    index = paths.root / "index.html"
    index.write_text(html_page(f"mtpano experiment: {config.name}", body, EXTRA_CSS), encoding="utf-8")
    return index
