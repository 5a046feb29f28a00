"""`mtpano report RUN`: the static HTML page of a training run, its numbers checked against the
run's own records and the page loaded in a real browser (headless Chromium, as the store report)."""

from __future__ import annotations

import json
import math
import re
import shutil

import cv2
import numpy as np
import pytest
from browser import Dom, browse
from train_stores import write_truth_store
from typer.testing import CliRunner

from mtpano.cli import app
from mtpano.run_report import Series, line_chart_svg, loss_group, tick_labels, validation_samples, write_run_report
from trainer.config import TrainConfig, TrainOptions
from trainer.train import fit, plan_run

WORST = 2
PANELS = 10  # rgb + label, prediction and error of depth, semantic and normals
SERIES_BLUE = (0x1F, 0x77, 0xB4)  # the first line colour of every plot


def tiny(**changes) -> TrainConfig:
    base = {"height": 32, "batch_size": 2, "steps": 6, "val_every": 2, "log_every": 1}
    return TrainConfig.from_preset("tiny", **{**base, **changes})


def report_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    return result.exit_code, result.output


def _path_points(d: str) -> int:
    return len(re.findall(r"[ML]-?\d", d))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 6-step tiny run on 4 rooms, validated every 2 steps on a store of 2 other rooms."""
    root = tmp_path_factory.mktemp("run")
    train = write_truth_store(root / "train", [1, 2, 3, 4])
    val = write_truth_store(root / "val", [5, 6])
    folder = fit(plan_run([train.url], [val.url], root / "run", tiny()), TrainOptions(data_workers=0))
    return folder.path


@pytest.fixture(scope="module")
def page(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report"
    code, output = report_cli(run, "--out", out, "--worst", WORST, "--panel-height", 32)
    assert code == 0, output
    assert f"wrote {out / 'index.html'}: 6 logged steps, 3 validations" in " ".join(output.split())
    return out


def _records(run, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# ---------------------------------------------------------------------- plots, hand-made
def test_line_chart_points_gaps_and_log_axis():
    steps = (10, 20, 30, 40)
    decades = line_chart_svg([Series("loss", steps, (1.0, 10.0, 100.0, 1000.0))], "decades")
    d = re.search(r'<path d="([^"]*)"', decades).group(1)
    ys = [float(y) for y in re.findall(r"[ML][\d.]+ ([\d.]+)", d)]
    assert len(ys) == 4 and np.allclose(np.diff(ys), np.diff(ys)[0], atol=0.11)  # log axis: decades evenly spaced
    assert "log scale" in decades and 'data-points="4"' in decades
    linear = line_chart_svg([Series("loss", steps, (1.0, 10.0, 100.0, 1000.0))], "forced", log=False)
    ys = [float(y) for y in re.findall(r"[ML][\d.]+ ([\d.]+)", re.search(r'<path d="([^"]*)"', linear).group(1))]
    assert abs(ys[0] - ys[1]) < 0.02 * abs(ys[2] - ys[3])  # linear: 1 and 10 nearly coincide
    assert "log scale" not in linear
    gap = line_chart_svg([Series("figure", steps, (0.5, math.nan, 0.25, 0.125))], "gap")
    d = re.search(r'<path d="([^"]*)"', gap).group(1)
    assert d.count("M") == 2 and d.count("L") == 1 and 'data-points="3"' in gap  # NaN breaks the line
    assert "log scale" not in gap  # spans a factor of 4 only
    two = line_chart_svg([Series("a", steps, (1, 2, 3, 4)), Series("b", steps[:2], (-1, 0))], "two", best_step=20)
    assert [int(n) for n in re.findall(r'data-points="(\d+)"', two)] == [4, 2]
    assert two.count('class="best-point"') == 2 and 'class="best"' in two


def test_tick_labels_and_loss_groups():
    assert tick_labels([1.0, 1.5, 2.0]) == ["1", "1.5", "2"]
    assert tick_labels([0.64312, 0.64511, 0.64710]) == ["0.643", "0.645", "0.647"]  # 2 digits would repeat
    assert tick_labels([0.0, 0.0005, 0.001], percent=True) == ["0%", "0.05%", "0.1%"]
    terms = ("total", "depth", "coarse_depth", "semantic_dice", "coarse_points", "gradient")
    groups = {t: loss_group(t) for t in terms}
    assert groups == {
        "total": "total",
        "depth": "depth",
        "coarse_depth": "depth",
        "semantic_dice": "semantic",
        "coarse_points": "auxiliary",
        "gradient": "auxiliary",
    }


# ---------------------------------------------------------------------- the run's numbers
def test_validation_split_is_the_runs(tmp_path):
    """The report rebuilds exactly the validation panoramas plan_run chose, in its order."""
    train = write_truth_store(tmp_path / "train", [1, 2, 3, 4, 5, 6])
    val = write_truth_store(tmp_path / "val", [7, 8])
    cases = [
        ([train.url], [], tiny(val_fraction=0.2)),
        ([train.url], [], tiny(val_fraction=0.2, val_limit=2)),
        ([train.url], [val.url], tiny()),
    ]
    for train_urls, val_urls, config in cases:
        plan = plan_run(train_urls, val_urls, tmp_path / "run", config)
        stores, samples = validation_samples(plan.record())
        assert samples == list(plan.val_samples) and len(samples) >= 2
        assert [s.url for s in stores] == [s.url for s in plan.stores]


def test_worst_panoramas_are_scored_as_the_run_validated(run, tmp_path):
    """Every validation panorama re-predicted by best/: the mean of the per-panorama rows is
    the run's logged `per_panorama` figure at the best step, and the worst come first."""
    files = write_run_report(run, tmp_path / "report", worst=WORST, panel_height=32)
    best = json.loads((run / "best" / "best.json").read_text())
    assert files.metric == best["metric"] == "depth_absrel" and files.model_step == best["step"]
    logged = next(r for r in _records(run, "val") if r["step"] == best["step"])["figures"]["per_panorama"]
    assert len(files.rows) == 2 and {r["pano_id"] for r in files.rows} == {"room_00005", "room_00006"}
    for name, value in logged.items():
        mean = float(np.mean([r[name] for r in files.rows]))
        assert mean == pytest.approx(value, rel=1e-9, abs=1e-12), name
    worst = [r["depth_absrel"] for r in files.worst]
    assert worst == sorted((r["depth_absrel"] for r in files.rows), reverse=True)  # AbsRel: higher is worse
    assert len(files.images) == WORST * PANELS
    for path in files.images:
        image = cv2.imread(str(path))
        assert image.shape == (32, 64, 3), path
        assert image.max() > 0, path  # every panel draws something
    first = files.worst[0]["folder"]
    for name in ("rgb", "depth_label", "semantic_label", "normals_label"):
        label = cv2.imread(str(tmp_path / "report" / first / f"{name}.png"))
        assert len(np.unique(label.reshape(-1, 3), axis=0)) >= 4 and label.std() > 10, name  # a room, not a fill


def test_run_report_bad_input_and_partial_runs(run, tmp_path):
    out = tmp_path / "out"
    code, output = report_cli(run, "--out", out, "--sort", "depth_nonsense")
    assert code == 2 and "unknown figure 'depth_nonsense' for this run" in output and not out.exists()
    code, output = report_cli(run, "--out", out, "--recompute")
    assert code == 2 and "apply to a label store" in " ".join(output.split())
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    record = json.loads((moved / "train_config.json").read_text())
    record["stores"][1]["url"] = str(tmp_path / "gone")
    (moved / "train_config.json").write_text(json.dumps(record))
    with (moved / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut off by a kill
    code, output = report_cli(moved, "--out", out)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--worst 0" in lines[0] and "gone" in lines[0], output
    code, output = report_cli(moved, "--out", out, "--worst", "0", "--sort", "normals_mean_deg")
    assert code == 0, output
    html = (out / "index.html").read_text()
    assert html.count('class="card chart"') == 5 + 18 + 3 and not (out / "worst").exists()


# ---------------------------------------------------------------------- in the browser
def test_run_report_loads_in_chromium(run, page, tmp_path):
    browsed = browse(page / "index.html", tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert browsed.returncode == 0, browsed.stderr[-2000:]
    console = [line for line in browsed.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    dom = Dom()
    dom.feed(browsed.stdout)
    body = dom.find("body")[0]
    assert body["data-ready"] == "1"
    assert body["data-images"] == str(WORST * PANELS) and body["data-broken-images"] == "0"
    text = browsed.stdout
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text

    # Loss: one line per term metrics.jsonl logs, one point per logged step.
    train, val = _records(run, "train"), _records(run, "val")
    paths = dom.find("path")
    loss_terms = {name for r in train for name in r["loss"]}
    val_figures = list(val[0]["figures"]["pooled"])
    lines = {p["data-series"]: p for p in paths}
    assert loss_terms | set(val_figures) | {"lr", "samples/s", "data wait"} == set(lines)
    assert len(paths) == len(loss_terms) + len(val_figures) + 3
    for name, p in lines.items():
        expected = len(val) if name in val_figures else len(train)
        assert int(p["data-points"]) == expected == _path_points(p["d"]), name
    charts = {a["data-chart"] for a in dom.find("div", **{"class": "card chart"})}
    assert {f"val-{name}" for name in val_figures} < charts and {"loss-total", "loss-depth", "lr"} < charts
    # The best step is marked on every validation plot.
    assert len(dom.find("circle", **{"class": "best-point"})) == len(val_figures)
    best = json.loads((run / "best" / "best.json").read_text())
    assert f"best {best['metric']}" in text and f"at step {best['step']}" in text

    # Summary: preset, tasks, stores with roles and sizes, the derived notes.
    record = json.loads((run / "train_config.json").read_text())
    rows = [f"{s['url']}{s['role']}ground_truth{s['panoramas']}depth, semantic, normalsmetric_range64x32"
            for s in record["stores"]]  # fmt: skip
    assert dom.rows["stores"][1:] == rows and [s["panoramas"] for s in record["stores"]] == [4, 2]
    for note in record["derived"]:
        assert note in text
    assert "tiny" in text and "depth, semantic, normals" in text

    # The worst validation panoramas, worst first, each with its ten images.
    cards = dom.find("div", **{"class": "pano"})
    assert len(cards) == WORST
    table = dom.rows["val-panoramas"][1:]
    assert [c["data-pano"] for c in cards] == [row[: len("room_00005")] for row in table[:WORST]]
    images = [a["src"] for a in dom.find("img")]
    assert len(images) == len(set(images)) == WORST * PANELS
    assert all((page / src).is_file() for src in images)


def test_run_report_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    browsed = browse(page / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,6000")
    assert browsed.returncode == 0 and shot.is_file(), browsed.stderr[-2000:]
    image = cv2.imread(str(shot))[..., ::-1].astype(np.int16)
    assert image.shape == (6000, 1280, 3) and image.std() > 20

    def count(color) -> int:
        return int((np.abs(image - np.asarray(color, np.int16)).sum(-1) <= 6).sum())

    assert count(SERIES_BLUE) > 2000  # the plotted lines and dots
    packed = (image[..., 0].astype(np.int32) << 16) | (image[..., 1].astype(np.int32) << 8) | image[..., 2]
    assert len(np.unique(packed)) > 500  # text, plots and images, not a flat page
    # The first worst panorama's semantic labels are on screen, each label pixel drawn as a 4 x 4 block.
    folder = next(p for p in sorted((page / "worst").iterdir()))
    label = cv2.imread(str(folder / "semantic_label.png"))[..., ::-1].reshape(-1, 3)
    colors, counts = np.unique(label, axis=0, return_counts=True)
    for color, n in zip(colors, counts, strict=True):
        if n >= 20 and color.any():
            assert count(color) >= 0.9 * 16 * n, (color, n, count(color))
