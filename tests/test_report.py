"""`mtpano report`: the static HTML page, loaded in a real browser (headless Chromium, which
`.ci/run` installs when missing)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from browser import Dom, browse
from quality_stores import label, make_rooms, mtpano

SEEDS = [10, 11, 12]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    images = make_rooms(root, SEEDS)
    (images / "broken.png").write_bytes(b"not an image")
    store = label(images, root / "store", normal_teacher="sim:normal_noise=10")
    out = mtpano("report", root / "store", "--out", root / "html", "--worst", "2", "--gt", root / "gt")
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stderr and "index.html" in out.stderr
    return root / "html", store


def test_report_files(report):
    out, _ = report
    thumbs, previews = sorted((out / "thumbs").glob("*.png")), sorted((out / "previews").glob("*.png"))
    assert len(thumbs) == len(previews) == 2
    assert [p.name for p in thumbs] == [p.name for p in previews]
    for thumb in thumbs:
        assert cv2.imread(str(thumb)).shape == (128, 256, 3)
    page = (out / "index.html").read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<link" not in page and 'src="http' not in page  # no external assets


def test_browser_check_sees_script_errors(tmp_path):
    """The checks below can fail: a page whose script throws shows up in the console log."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body data-ready="0"><script>missingFunction();</script></body></html>')
    run = browse(page, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert any("CONSOLE" in line and "missingFunction" in line for line in run.stderr.splitlines())
    assert 'data-ready="0"' in run.stdout


def test_report_loads_in_chromium(report, tmp_path):
    out, store = report
    run = browse(out / "index.html", tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # no script errors, no failed loads reported to the console
    dom = Dom()
    dom.feed(run.stdout)
    body = dom.find("body")[0]
    assert body["data-ready"] == "1"  # the page's script ran to its end after the load event
    assert body["data-images"] == "2" and body["data-broken-images"] == "0"
    # The table: every panorama, worst first by the default figure, the failed one last.
    rows = dom.rows["panoramas"][1:]
    assert len(rows) == 4 and rows[-1].startswith("broken") and "failed" in rows[-1]
    ids = [r["pano_id"] for r in store.rows() if r["status"] == "ok"]
    assert sorted(r[: len("room_00010")] for r in rows[:3]) == sorted(ids)
    # One histogram per figure, ground-truth metrics included, each an inline SVG with bars.
    figures = {a["data-figure"] for a in dom.find("div", **{"class": "card"})}
    for name in ("depth_seam_error", "normals_disagreement_deg", "semantic_coverage", "normals_gt_mean_deg"):
        assert name in figures, name
    assert len(dom.find("svg")) >= len(figures) + 1  # + the class shares
    assert len(dom.find("rect")) > len(figures)
    # Thumbnails link to previews that exist.
    links = [a["href"] for a in dom.find("a") if a.get("href", "").startswith("previews/")]
    assert len(set(links)) == 2 and all((out / link).is_file() for link in links)


def test_report_screenshot_is_not_blank(report, tmp_path):
    out, _ = report
    shot = tmp_path / "shot.png"
    run = browse(out / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1280,3000")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = cv2.imread(str(shot))[..., ::-1]
    assert image.shape == (3000, 1280, 3)
    assert image.std() > 20
    bars = (np.abs(image.astype(int) - (0x4A, 0x7A, 0xB5)).sum(-1) < 10).sum()  # histogram bar colour
    assert bars > 2000, bars
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # text, plots and thumbnails, not a flat page
