"""Patch layouts: where the perspective patches of a panorama look.

Every layout is a list of (yaw, pitch, roll, fov_x) in degrees, roll 0 (patches stay
upright). `Layout.cameras(h, w)` turns it into `PatchCameras`; `coverage(...)` measures how
often each ERP pixel is seen. The default, `icosahedron`, looks at the 20 face centres of
an icosahedron with 80 degree patches and covers every ERP pixel at least once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spherical.camera import PatchCameras
from spherical.erp import solid_angle_weights
from spherical.reproject import PatchToErp, patch_to_erp

GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))
DEFAULT_LAYOUT = "icosahedron"


@dataclass(frozen=True)
class Layout:
    """A named set of upright patch directions.

    Fields:
        name: layout spec that rebuilds it (e.g. "fibonacci:30").
        yaw_deg, pitch_deg: (N,) float64 optical-axis longitude / latitude, degrees.
        fov_x_deg: (N,) float64 horizontal field of view of each patch, degrees.
    """

    name: str
    yaw_deg: np.ndarray
    pitch_deg: np.ndarray
    fov_x_deg: np.ndarray

    def __len__(self) -> int:
        return len(self.yaw_deg)

    def cameras(
        self,
        height: int,
        width: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> PatchCameras:
        """Upright (roll 0) cameras of size height x width (square when width is None)."""
        return PatchCameras.from_ypr(
            torch.from_numpy(self.yaw_deg),
            torch.from_numpy(self.pitch_deg),
            0.0,
            fov_x_deg=torch.from_numpy(self.fov_x_deg),
            height=height,
            width=width or height,
            dtype=dtype,
            device=device,
        )


def _from_directions(name: str, dirs: np.ndarray, fov_deg: float) -> Layout:
    """Layout looking along unit world directions (N,3)."""
    yaw = np.degrees(np.arctan2(dirs[:, 0], dirs[:, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-dirs[:, 1], -1.0, 1.0)))
    return Layout(name, yaw, pitch, np.full(len(dirs), float(fov_deg)))


def cube_layout(fov_deg: float = 100.0) -> Layout:
    """Six patches on the cube faces (front, right, back, left, up, down).

    At 90 degrees the faces only touch; the default 100 degrees gives them overlap, which
    fusion needs to blend seams and align depth.
    """
    yaw = np.array([0.0, 90.0, 180.0, -90.0, 0.0, 0.0])
    pitch = np.array([0.0, 0.0, 0.0, 0.0, 90.0, -90.0])
    return Layout("cube", yaw, pitch, np.full(6, float(fov_deg)))


def icosahedron_directions() -> np.ndarray:
    """(20,3) unit directions of the face centres of an icosahedron with vertices at the poles."""
    vertices = [np.array([0.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0])]
    lat = math.atan(0.5)
    for k in range(5):
        for sign, offset in ((1.0, 0.0), (-1.0, 36.0)):
            lon = math.radians(72.0 * k + offset)
            vertices.append(
                np.array([math.cos(lat) * math.sin(lon), -sign * math.sin(lat), math.cos(lat) * math.cos(lon)])
            )
    v = np.stack(vertices)  # (12,3)
    # Faces are the triples of mutually adjacent vertices (edge length is the minimum distance).
    dist = np.linalg.norm(v[:, None] - v[None], axis=-1)
    edge = dist[dist > 1e-9].min()
    adjacent = np.abs(dist - edge) < 1e-6
    centres = []
    for a in range(12):
        for b in range(a + 1, 12):
            for c in range(b + 1, 12):
                if adjacent[a, b] and adjacent[b, c] and adjacent[a, c]:
                    centre = v[a] + v[b] + v[c]
                    centres.append(centre / np.linalg.norm(centre))
    assert len(centres) == 20, f"an icosahedron has 20 faces, found {len(centres)}"
    return np.stack(centres)


def icosahedron_layout(fov_deg: float = 80.0) -> Layout:
    """Twenty patches on the icosahedron's face centres (latitudes +-52.6 and +-10.8 degrees).

    A face's vertices lie 37.4 degrees from its centre, so 80 degree patches cover every
    face with margin for fusion.
    """
    return _from_directions("icosahedron", icosahedron_directions(), fov_deg)


def fibonacci_directions(n: int) -> np.ndarray:
    """(n,3) unit directions on a Fibonacci (golden-angle) spiral from pole to pole."""
    k = np.arange(n, dtype=np.float64) + 0.5
    sin_lat = 1.0 - 2.0 * k / n
    lat = np.arcsin(sin_lat)
    lon = np.radians(GOLDEN_ANGLE_DEG * k)
    return np.stack((np.cos(lat) * np.sin(lon), -sin_lat, np.cos(lat) * np.cos(lon)), -1)


def default_fibonacci_fov(n: int) -> float:
    """FoV (degrees) for n spiral patches: the inscribed circle of a square patch must reach
    about 1.6 times the radius of the cap that holds a 1/n share of the sphere."""
    cap = math.acos(1.0 - 2.0 / n)
    return float(min(150.0, max(30.0, math.degrees(2.0 * 1.6 * cap))))


def fibonacci_layout(n: int, fov_deg: float | None = None) -> Layout:
    """n patches on a Fibonacci spiral; the default FoV covers the sphere (see coverage)."""
    if n < 4:
        raise ValueError(f"a spiral layout needs at least 4 patches, got {n}")
    fov = default_fibonacci_fov(n) if fov_deg is None else fov_deg
    return _from_directions(f"fibonacci:{n}", fibonacci_directions(n), fov)


def random_layout(
    n: int,
    *,
    fov_range: tuple[float, float] = (60.0, 100.0),
    pitch_range: tuple[float, float] = (-90.0, 90.0),
    seed: int = 0,
) -> Layout:
    """n patches at random directions, uniform on the sphere band of `pitch_range`, with a
    uniformly random FoV in `fov_range` (degrees). Deterministic for a seed."""
    if n < 1:
        raise ValueError(f"a random layout needs at least one patch, got {n}")
    lo, hi = sorted(pitch_range)
    if not -90.0 <= lo <= hi <= 90.0:
        raise ValueError(f"pitch range must lie in [-90, 90], got {pitch_range}")
    rng = np.random.default_rng(seed)
    sin_pitch = rng.uniform(math.sin(math.radians(lo)), math.sin(math.radians(hi)), n)
    pitch = np.degrees(np.arcsin(sin_pitch))
    yaw = rng.uniform(-180.0, 180.0, n)
    fov = rng.uniform(fov_range[0], fov_range[1], n)
    return Layout(f"random:{n}", yaw, pitch, fov)


def parse_layout(spec: str, fov_deg: float | None = None, seed: int = 0) -> Layout:
    """Layout from a spec: cube | icosahedron | fibonacci:N | random:N.

    `fov_deg` overrides the layout's default FoV (for random:N, every patch gets it).
    """
    name, _, arg = spec.partition(":")
    if name in ("cube", "icosahedron") and not arg:
        kwargs = {} if fov_deg is None else {"fov_deg": fov_deg}
        return cube_layout(**kwargs) if name == "cube" else icosahedron_layout(**kwargs)
    if name in ("fibonacci", "random") and arg.isdigit():
        n = int(arg)
        if name == "fibonacci":
            return fibonacci_layout(n, fov_deg)
        fov_range = (60.0, 100.0) if fov_deg is None else (fov_deg, fov_deg)
        return random_layout(n, fov_range=fov_range, seed=seed)
    raise ValueError(f"unknown layout {spec!r}: use cube, icosahedron, fibonacci:N or random:N")


@dataclass(frozen=True)
class Coverage:
    """How often the patches of a layout see each ERP pixel.

    Fields:
        covered: share of ERP pixels seen by at least one patch.
        covered_area: the same, weighted by solid angle.
        min_count, max_count: fewest / most patches seeing one pixel.
        mean_count: mean number of patches per pixel, weighted by solid angle.
        overlap_area: share of the sphere seen by two patches or more.
    """

    covered: float
    covered_area: float
    min_count: int
    max_count: int
    mean_count: float
    overlap_area: float


def coverage(mapping: PatchToErp) -> Coverage:
    """Coverage statistics of the patches behind `mapping`."""
    counts = mapping.counts()  # (H,W)
    area = solid_angle_weights(mapping.erp_height, dtype=torch.float64)[:, None].expand_as(counts)
    total = float(area.sum())
    return Coverage(
        covered=float((counts > 0).double().mean()),
        covered_area=float(area[counts > 0].sum()) / total,
        min_count=int(counts.min()),
        max_count=int(counts.max()),
        mean_count=float((counts * area).sum()) / total,
        overlap_area=float(area[counts > 1].sum()) / total,
    )


def layout_coverage(layout: Layout, patch_size: int, erp_height: int) -> Coverage:
    """Coverage of `layout` with square patches of `patch_size` on an ERP of `erp_height`."""
    return coverage(patch_to_erp(layout.cameras(patch_size, dtype=torch.float64), erp_height))
