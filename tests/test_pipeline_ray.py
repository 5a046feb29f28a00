"""`mtpano labels` as users run it: the installed command, a real local Ray, real stores.

Each command test starts the command in a subprocess (its own Ray instance) and checks what a
user sees: exit codes, messages, and the store left on disk. The last ones check how a run
shares a machine's CPUs between its labelling workers and its decode tasks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_models import save_tiny_depth_anything, save_tiny_mask2former
from typer.testing import CliRunner

from mtpano.cli import app
from pipeline.config import RunOptions
from pipeline.run import _DECODE_CPUS, _worker_resources
from storage.labelstore import LabelStore
from synthetic.dataset import write_dataset

SIM = ["--depth-teacher", "sim", "--semantic-teacher", "sim", "--normal-teacher", "sim"]
SMALL = ["--patch-size", "96", "--erp-height", "64"]
# Columns that differ between two runs of the same work: timings and which worker did it.
RUN_COLUMNS = ("worker", "finished_at")


def mtpano(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mtpano")
    # One torch thread per worker, and no model hub: tests never download.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rooms")
    write_dataset(root, list(range(6)), height=128)
    return root / "images"


def kill_session(session: int) -> None:
    """SIGKILL every process of a session (the driver, Ray's daemons and its workers, which
    run in process groups of their own), as a crash of the machine would."""
    for _ in range(3):  # processes may be starting while we kill
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # the session id follows state, ppid and pgrp
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
        time.sleep(0.2)


def label_rows(store: LabelStore) -> dict[str, dict]:
    """Rows by pano id, without the columns that say how (not what) a run labelled."""
    return {
        r["pano_id"]: {k: v for k, v in r.items() if not k.startswith("t_") and k not in RUN_COLUMNS}
        for r in store.rows()
    }


def assert_valid_labels(store: LabelStore, index: int) -> None:
    """What `mtpano verify` will check: dtypes, ranges, unit normals, confidences in [0,1]."""
    a = store.read(index)
    assert a["rgb"].dtype == np.uint8
    depth = a["depth"].astype(np.float32)
    assert np.isfinite(depth).mean() > 0.99 and np.nanmin(depth) > 0
    normals = a["normals"].astype(np.float32)
    ok = np.isfinite(normals).all(0)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(np.linalg.norm(normals[:, ok], axis=0), 1.0, atol=2e-3)
    labelled = a["semantic"] != 255
    assert labelled.mean() == 1.0 and a["semantic"][labelled].max() < len(store.spec.class_names)
    for task in ("depth", "semantic", "normals"):
        conf = a[f"{task}_confidence"].astype(np.float32)
        assert conf.min() >= 0.0 and conf.max() <= 1.0


def test_two_workers_hf_teachers_and_bad_inputs(rooms, tmp_path):
    """Tiny random Depth Anything and Mask2Former through `hf:` directories, 2 Ray workers, a
    folder with broken files and convertible ones: the broken ones fail with one-line
    reasons (exit code 3), everything else is labelled into a valid store."""
    data = tmp_path / "data"
    shutil.copytree(rooms, data / "good")
    image = cv2.imread(str(rooms / "room_00000.png"))
    (data / "convert").mkdir()
    cv2.imwrite(str(data / "convert" / "gray.png"), image[..., 0])
    cv2.imwrite(str(data / "convert" / "rgba.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(data / "convert" / "deep.png"), image.astype(np.uint16) * 257)
    bad = data / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not a picture")
    encoded = (rooms / "room_00001.png").read_bytes()
    (bad / "truncated.png").write_bytes(encoded[: len(encoded) // 2])
    cv2.imwrite(str(bad / "square.png"), image[:, :128])
    depth_dir = save_tiny_depth_anything(tmp_path / "da", metric=True)
    semantic_dir = save_tiny_mask2former(tmp_path / "m2f")
    out = tmp_path / "store"
    run = mtpano(
        "labels", str(data), "--out", str(out), "--workers", "2", "--batch", "1", *SMALL,
        "--depth-teacher", f"hf:{depth_dir}", "--semantic-teacher", f"hf:{semantic_dir}",
        "--normal-teacher", "geometric",
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    store = LabelStore.open(str(out))
    rows = {r["pano_id"]: r for r in store.rows()}
    failed = {p: r["error"] for p, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {"bad/empty", "bad/text", "bad/truncated", "bad/square"}
    assert "empty file" in failed["bad/empty"] and "truncated PNG" in failed["bad/truncated"]
    assert "not a JPEG" in failed["bad/text"] and "2:1" in failed["bad/square"]
    for pano_id, error in failed.items():
        assert f"{pano_id}: {error}" in run.stderr  # listed at the end
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 9
    assert len({r["worker"] for r in ok}) == 2  # both workers did work
    assert store.spec.teachers["depth"]["revision"].startswith("sha256:")
    assert store.spec.depth_kind == "metric_range" and len(store.spec.class_names) == 150
    for r in ok:
        assert_valid_labels(store, r["index"])
    # The 16-bit copy reaches the labeller as 16-bit samples and is stored as the 8-bit original.
    deep, original = (store.read(rows[p]["index"])["rgb"] for p in ("convert/deep", "good/room_00000"))
    assert np.array_equal(deep, original)
    assert "9 ok, 4 failed" in run.stderr


CRASHING_PLUGIN = """
import os
from pathlib import Path

from pipeline.teachers.sim import SimTeacher, parse_sim_spec

MARKER = Path(__file__).with_name("crashed")


class CrashOnce:
    task = "depth"

    def __init__(self):
        self.sim = SimTeacher("depth", parse_sim_spec("sim", "depth"))

    def predict(self, images, cameras):
        if "room_00003" in cameras.pano_ids and not MARKER.exists():
            MARKER.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies, as in a segfault or an OOM kill
        return self.sim.predict(images, cameras)


def factory():
    return CrashOnce()
"""


def test_crashed_worker_is_retried_and_plugins_reach_workers(rooms, tmp_path):
    """A `py:` plugin that lives only in the driver's working directory reaches the Ray
    workers; when it kills its worker once, Ray restarts the worker and the run completes."""
    (tmp_path / "crashy.py").write_text(textwrap.dedent(CRASHING_PLUGIN))
    run = mtpano(
        "labels", str(rooms), "--out", str(tmp_path / "store"), *SMALL, "--batch", "1",
        "--depth-teacher", "py:crashy:factory", "--semantic-teacher", "none", "--normal-teacher", "none",
        cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "crashed").exists(), run.stderr  # it did crash
    assert run.returncode == 0, run.stderr
    rows = LabelStore.open(str(tmp_path / "store")).rows()
    assert [r["status"] for r in rows] == ["ok"] * 6


def test_killed_run_resumes_to_the_same_store(rooms, tmp_path):
    """SIGKILL the whole run mid-way (driver, Ray and workers), run the same command again:
    it skips what was done and the store ends identical to one made in one go."""
    reference = tmp_path / "reference"
    done = mtpano("labels", str(rooms), "--out", str(reference), *SIM, *SMALL, "--in-process")
    assert done.returncode == 0, done.stderr

    out = tmp_path / "store"
    args = [str(Path(sys.executable).with_name("mtpano")), "labels", str(rooms), "--out", str(out), *SIM, *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*args, "--batch", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(list((out / "rows").glob("*.json"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no panorama finished in time"
        time.sleep(0.05)
    kill_session(proc.pid)
    proc.wait()
    partial = LabelStore.open(str(out)).rows()
    finished = sum(r["status"] == "ok" for r in partial)
    assert 2 <= finished < 6, finished

    resumed = mtpano("labels", str(rooms), "--out", str(out), *SIM, *SMALL)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {finished} panoramas already labelled, {6 - finished} to go" in resumed.stderr
    a, b = LabelStore.open(str(out)), LabelStore.open(str(reference))
    assert label_rows(a) == label_rows(b)
    for row in a.rows():
        for name, value in a.read(row["index"]).items():
            np.testing.assert_array_equal(value, b.read(row["index"])[name], err_msg=f"{row['pano_id']} {name}")
    assert not list((out / "rows").glob("*.json"))  # consolidated into manifest.parquet


def test_usage_errors_exit_2_and_leave_stores_alone(rooms, tmp_path):
    out = tmp_path / "store"
    first = mtpano("labels", str(rooms), "--out", str(out), *SIM, *SMALL, "--in-process")
    assert first.returncode == 0, first.stderr
    before = (out / "manifest.parquet").read_bytes()

    # The rest in this process (the command's own code, without an interpreter start each).
    def labels(*args: str):
        return CliRunner().invoke(app, ["labels", *map(str, args)])

    other = labels(rooms, "--out", out, *SIM, "--patch-size", "96", "--erp-height", "32")
    assert other.exit_code == 2
    assert "another configuration (erp_height differ)" in other.stderr and "--overwrite" in other.stderr
    assert (out / "manifest.parquet").read_bytes() == before

    missing = labels(tmp_path / "nowhere", "--out", out, *SIM)
    assert missing.exit_code == 2 and "no such folder or list file" in missing.stderr
    offline = labels(
        rooms, "--out", tmp_path / "new", "--depth-teacher", "hf:someone/missing-model",
        "--semantic-teacher", "none", "--normal-teacher", "none",
    )  # fmt: skip
    assert offline.exit_code == 2
    message = [line for line in offline.stderr.splitlines() if "someone/missing-model" in line]
    assert len(message) == 1 and "--depth-teacher hf:" in message[0]
    assert not (tmp_path / "new").exists()

    again = labels(rooms, "--out", out, *SIM, *SMALL)
    assert again.exit_code == 0 and "6 were done before" in again.stderr  # nothing redone, no Ray started
    replaced = labels(rooms, "--out", out, *SIM, "--patch-size", "96", "--erp-height", "32", "--overwrite",
                      "--in-process")  # fmt: skip
    assert replaced.exit_code == 0, replaced.stderr
    assert LabelStore.open(str(out)).spec.erp_height == 32


SIM_PLUGIN = """
from pipeline.teachers.sim import SimTeacher, parse_sim_spec


def factory():
    return SimTeacher("depth", parse_sim_spec("sim", "depth"))
"""


def test_joins_a_running_ray_cluster(rooms, tmp_path):
    """--address: the run uses a cluster started beforehand with `ray start`, whose workers
    did not start in the driver's folder, yet import the driver's `py:` plugin."""
    (tmp_path / "plugin_here.py").write_text(textwrap.dedent(SIM_PLUGIN))
    ray = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's token authentication is for clusters on shared networks; this one is on loopback.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    # In the foreground (--block) and in a session of its own, so that ending the test stops
    # this cluster and nothing else of the machine's (`ray stop` would stop every cluster).
    options = [f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"]
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray, "status", f"--address=127.0.0.1:{port}"], capture_output=True, env=env).returncode:
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        run = mtpano(
            "labels", str(rooms), "--out", str(tmp_path / "store"), *SMALL, "--address", f"127.0.0.1:{port}",
            "--depth-teacher", "py:plugin_here:factory", "--semantic-teacher", "none", "--normal-teacher", "none",
            cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert [r["status"] for r in LabelStore.open(str(tmp_path / "store")).rows()] == ["ok"] * 6
        status = subprocess.run([ray, "status", f"--address=127.0.0.1:{port}"], capture_output=True, env=env)
        assert status.returncode == 0  # the cluster outlives the run
    finally:
        kill_session(head.pid)
        head.wait()


DECODE_PROCESSES = """
import json, os, sys, time
import ray
from pipeline.config import RunOptions
from pipeline.run import _DECODE_CPUS, _start_ray, _worker_resources

_start_ray(None)
# As many labelling workers as CPUs: more Ray processes than CPUs, when Ray ends idle ones.
workers, resources, _ = _worker_resources(RunOptions(workers=int(sys.argv[1])), ray.cluster_resources())


@ray.remote
class Worker:
    def ready(self):
        return True


@ray.remote(num_cpus=_DECODE_CPUS)
def decode(began):
    time.sleep(0.2)
    return os.getpid(), time.monotonic() - began


held = [Worker.options(**resources).remote() for _ in range(workers)]
ray.get([w.ready.remote() for w in held])
calls = []
for _ in range(2):
    began = time.monotonic()
    calls.append(ray.get([decode.remote(began) for _ in range(3)]))
    time.sleep(3)  # the workers' call: the decode processes idle longer than Ray's default (1 s)
print(json.dumps({"calls": calls, "gpus": ray.cluster_resources().get("GPU", 0)}))
"""


def test_decode_processes_live_through_a_run(tmp_path):
    """The decode tasks of a run on a machine without GPUs: one at a time beside the labelling
    workers (a second process would only take their cores), in a process that outlives the
    idle time between two calls, as a new one would cost each call a Ray worker start."""
    script = tmp_path / "decode_processes.py"
    script.write_text(DECODE_PROCESSES)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(script), str(os.cpu_count())], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    pids = [{pid for pid, _ in call} for call in found["calls"]]
    assert pids[1] == pids[0]  # the same processes decoded the second call
    if not found["gpus"]:
        assert len(pids[0]) == 1
        ends = sorted(end for _, end in found["calls"][0])
        assert all(b - a >= 0.19 for a, b in itertools.pairwise(ends))  # one after another


@pytest.mark.parametrize(
    ("cluster", "workers"),
    [({"CPU": 2.0}, None), ({"CPU": 2.0}, 3), ({"CPU": 16.0, "GPU": 1.0}, None), ({"CPU": 8.0, "GPU": 8.0}, None),
     ({"CPU": 4.0, "GPU": 2.0}, 4)],
)  # fmt: skip
def test_workers_leave_a_decode_task_its_cpus(cluster, workers):
    """Whatever the machine, the labelling workers that run at once leave a decode task room."""
    count, resources, _ = _worker_resources(RunOptions(workers=workers), cluster)
    at_once = min(count, int(cluster.get("GPU", 0)) or count)  # a worker takes a whole GPU
    assert resources["num_cpus"] > 0
    assert at_once * resources["num_cpus"] + _DECODE_CPUS <= cluster["CPU"] + 1e-9
    if cluster == {"CPU": 16.0, "GPU": 1.0}:
        assert resources == {"num_gpus": 1, "num_cpus": 1.0}  # a GPU worker's CPU, where there are enough
