"""Shared fixtures: the team's real reference data (../shared/data/real) and small helpers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch


def _find_real_data() -> Path | None:
    """`MTPANO_REAL_DATA`, else the first `shared/data/real` beside a parent of this checkout."""
    env = os.environ.get("MTPANO_REAL_DATA")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "real"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = _find_real_data()
    if path is None or not (path / "replica").is_dir():
        pytest.skip("real reference data not found: set MTPANO_REAL_DATA to shared/data/real")
    return path


def angle_between(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Angle in radians between vectors along `dim` (not necessarily unit), in float64 so
    that float32 inputs are measured, not the acos of a rounded cosine."""
    a, b = a.double(), b.double()
    a = a / torch.linalg.vector_norm(a, dim=dim, keepdim=True)
    b = b / torch.linalg.vector_norm(b, dim=dim, keepdim=True)
    return torch.acos((a * b).sum(dim).clamp(-1.0, 1.0))


def erp_pixel_angle(erp_height: int) -> float:
    """Angular size of one ERP pixel, radians."""
    return math.pi / erp_height
