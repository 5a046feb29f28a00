"""A worker keeps the memory it frees for reuse while a run lasts, and gives it back after
(`pipeline.memory`). malloc's settings are the whole process's, so each check runs in a
fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pipeline.memory import _glibc

SCRIPT = """
import json
import torch
from pipeline.memory import freed_memory_kept

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

def handed_back_mb():
    block = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB, every page touched
    held = rss_mb()
    del block
    return held - rss_mb()

out = {"before": handed_back_mb()}
with freed_memory_kept(False):
    out["not_enabled"] = handed_back_mb()
with freed_memory_kept():
    out["kept"] = handed_back_mb()
    inside = rss_mb()
out["given_back_at_the_end"] = inside - rss_mb()
out["after"] = handed_back_mb()
print(json.dumps(out))
"""


@pytest.mark.skipif(_glibc() is None, reason="malloc's settings are glibc's")
def test_freed_memory_is_kept_inside_the_block_and_given_back_after():
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    mb = json.loads(run.stdout.split("\n")[-2])
    # A freed 64 MB block goes back to the system by default, and when keeping is not enabled.
    assert mb["before"] > 60 and mb["not_enabled"] > 60, mb
    # Kept: the process holds on to its pages, and gives them back as the block ends.
    assert mb["kept"] < 4 and mb["given_back_at_the_end"] > 60, mb
    # After the block, freeing hands memory back again.
    assert mb["after"] > 60, mb
