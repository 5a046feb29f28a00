"""Ground-truth PNG files (the Replica format of the conventions) round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from storage.groundtruth import read_depth, read_normals, read_semantic, write_depth, write_normals, write_semantic


def test_depth_round_trip_to_a_quarter_millimetre(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.2, 15.0, (16, 32)).astype(np.float32)
    depth[0, 0] = np.nan
    depth[0, 1] = 20.0  # beyond the 16 m range of the format: stored as invalid
    write_depth(tmp_path / "d.png", depth)
    back = read_depth(tmp_path / "d.png")
    assert np.isnan(back[0, 0]) and np.isnan(back[0, 1])
    finite = np.isfinite(depth) & (depth < 16)
    assert np.abs(back[finite] - depth[finite]).max() <= 0.5 / 4096 + 1e-6


def test_normals_and_semantic_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    n = rng.normal(size=(3, 8, 16)).astype(np.float32)
    n /= np.linalg.norm(n, axis=0, keepdims=True)
    n[:, 2, 3] = np.nan
    write_normals(tmp_path / "n.png", n)
    back = read_normals(tmp_path / "n.png")
    assert np.isnan(back[:, 2, 3]).all()
    mask = np.isfinite(n).all(0)
    cos = (back * n).sum(0)[mask]
    assert cos.min() > np.cos(np.radians(1.0))  # 8-bit quantisation: under a degree
    ids = rng.integers(0, 150, (8, 16)).astype(np.uint8)
    write_semantic(tmp_path / "s.png", ids)
    assert np.array_equal(read_semantic(tmp_path / "s.png"), ids)


def test_unreadable_files_raise_clear_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="could not read"):
        read_depth(tmp_path / "bad.png")
    write_semantic(tmp_path / "s.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match="16-bit"):
        read_depth(tmp_path / "s.png")
