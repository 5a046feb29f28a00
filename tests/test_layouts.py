"""Patch layouts and their coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spherical.layouts import (
    DEFAULT_LAYOUT,
    cube_layout,
    fibonacci_layout,
    icosahedron_directions,
    layout_coverage,
    parse_layout,
    random_layout,
)


def test_icosahedron_face_centres():
    d = icosahedron_directions()
    assert d.shape == (20, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    angles = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1)))
    np.fill_diagonal(angles, 180.0)
    # Neighbouring face centres of an icosahedron are 41.81 degrees apart, three per face.
    nearest = np.sort(angles, axis=1)[:, :3]
    np.testing.assert_allclose(nearest, 41.8103, atol=1e-3)
    lat = np.degrees(np.arcsin(-d[:, 1]))
    assert sorted(np.round(np.abs(lat), 2).tolist()) == [10.81] * 10 + [52.62] * 10


@pytest.mark.parametrize(("erp_height", "patch"), [(64, 64), (256, 128), (512, 518)])
def test_default_layout_covers_every_pixel(erp_height, patch):
    cov = layout_coverage(parse_layout(DEFAULT_LAYOUT), patch, erp_height)
    assert cov.min_count >= 1 and cov.covered == 1.0
    # Every pixel is seen twice or more: fusion always has an overlap to blend and align.
    assert cov.min_count >= 2 and cov.overlap_area == pytest.approx(1.0)
    assert 2.0 < cov.mean_count < 3.5


def test_cube_coverage_depends_on_fov():
    cov = layout_coverage(cube_layout(), 128, 128)
    assert cov.covered == 1.0 and 0.1 < cov.overlap_area < 0.3
    tight = layout_coverage(cube_layout(88.0), 128, 128)
    assert tight.covered < 1.0  # below 90 degrees the cube leaves gaps at its edges


@pytest.mark.parametrize("n", [8, 12, 20, 30, 50])
def test_fibonacci_default_fov_covers_the_sphere(n):
    layout = fibonacci_layout(n)
    assert len(layout) == n
    cov = layout_coverage(layout, 96, 128)
    assert cov.covered == 1.0, cov
    assert cov.mean_count < 3.5  # covering without heavy redundancy


def test_random_layout_is_seeded_and_in_range():
    a = random_layout(50, fov_range=(70.0, 90.0), pitch_range=(-30.0, 60.0), seed=3)
    b = random_layout(50, fov_range=(70.0, 90.0), pitch_range=(-30.0, 60.0), seed=3)
    c = random_layout(50, fov_range=(70.0, 90.0), pitch_range=(-30.0, 60.0), seed=4)
    np.testing.assert_array_equal(a.yaw_deg, b.yaw_deg)
    assert not np.array_equal(a.yaw_deg, c.yaw_deg)
    assert a.fov_x_deg.min() >= 70 and a.fov_x_deg.max() <= 90
    assert a.pitch_deg.min() >= -30 and a.pitch_deg.max() <= 60
    cams = a.cameras(32)
    assert len(cams) == 50 and cams.fov_x_deg.min() >= 70
    cov = layout_coverage(a, 32, 64)
    assert 0.0 < cov.covered_area < 1.0  # no pitch beyond 60 + fov/2: the nadir is missed


def test_parse_layout_specs_and_errors():
    assert len(parse_layout("cube")) == 6
    assert len(parse_layout("icosahedron")) == 20
    assert parse_layout("icosahedron", fov_deg=90.0).fov_x_deg[0] == 90.0
    assert len(parse_layout("fibonacci:17")) == 17
    rnd = parse_layout("random:5", fov_deg=75.0, seed=1)
    assert len(rnd) == 5 and set(rnd.fov_x_deg.tolist()) == {75.0}
    for bad in ("dodecahedron", "fibonacci", "random:x", "cube:3", "fibonacci:2"):
        with pytest.raises(ValueError):
            parse_layout(bad)


def test_optical_axes_follow_the_layout_angles():
    layout = parse_layout("fibonacci:12")
    cams = layout.cameras(16)
    axes = cams.optical_axes().double().numpy()
    yaw = np.radians(layout.yaw_deg)
    pitch = np.radians(layout.pitch_deg)
    expected = np.stack((np.cos(pitch) * np.sin(yaw), -np.sin(pitch), np.cos(pitch) * np.cos(yaw)), -1)
    np.testing.assert_allclose(axes, expected, atol=1e-6)
    assert math.isclose(float(np.abs(np.linalg.norm(axes, axis=1) - 1).max()), 0.0, abs_tol=1e-6)
