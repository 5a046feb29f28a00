"""A worker's peak memory stays under 4 GB at full size: 2048x1024 panoramas, all three
teachers at the default layout (20 patches of 518 px), 150-class semantic probabilities,
two panoramas per call (the default), labels at the default 512 rows, freed memory kept for
reuse while the run lasts (the default, `pipeline.memory`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from storage.labelstore import LabelStore

LIMIT_GB = 4.0

SCRIPT = """
import sys
from pathlib import Path

from pipeline.config import LabelConfig, RunOptions
from pipeline.run import run_labels
from synthetic.dataset import write_dataset

root = Path(sys.argv[1])
write_dataset(root, [7, 8], height=1024)
config = LabelConfig(depth_teacher="sim", semantic_teacher="sim", normal_teacher="sim")
summary = run_labels(str(root / "images"), str(root / "store"), config, RunOptions(in_process=True))
assert summary.exit_code == 0, summary.failed
# VmHWM is this process's own peak: ru_maxrss would also count the parent's at fork time.
status = Path("/proc/self/status").read_text()
print(status.split("VmHWM:")[1].split()[0])  # kilobytes
"""


def test_peak_memory_of_a_worker_at_full_size(tmp_path):
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    peak_gb = int(run.stdout.split()[-1]) / 1e6
    assert peak_gb < LIMIT_GB, f"peak resident memory {peak_gb:.2f} GB"
    store = LabelStore.open(str(tmp_path / "store"))
    assert store.spec.erp_height == 512 and store.spec.patch_size == 518 and store.spec.num_patches == 20
    assert len(store.spec.class_names) == 150
    assert [r["status"] for r in store.rows()] == ["ok", "ok"]
