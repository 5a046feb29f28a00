"""ERP -> ERP rotation (spherical.resample): conventions, seam, poles, and pyequilib's equi2equi."""

from __future__ import annotations

import math

import pytest
import torch
from equilib import equi2equi

from spherical.equilib_adapter import _AXES, _zyx_angles
from spherical.erp import erp_rays
from spherical.resample import rotate_erp, rotation_sampling_grid
from spherical.rotation import pitch_matrix, roll_matrix, yaw_matrix, ypr_to_matrix
from spherical.sampling import pad_erp
from synthetic.render import render_erp, render_rays
from synthetic.scene import generate_scene


def _random_erp(height: int, channels: int = 3, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, channels, height, 2 * height, generator=g, dtype=dtype)


def test_identity_returns_the_input():
    erp = _random_erp(16)
    torch.testing.assert_close(rotate_erp(erp, torch.eye(3)), erp, atol=1e-5, rtol=0)
    classes = torch.randint(0, 150, (1, 1, 16, 32), generator=torch.Generator().manual_seed(1))
    assert torch.equal(rotate_erp(classes, torch.eye(3), "nearest"), classes)


@pytest.mark.parametrize("columns", [1, 5, -3, 16])
def test_yaw_by_whole_pixels_is_a_column_roll(columns):
    """Convention: rolling columns by +k moves longitude phi to phi + 2 pi k / W = R_yaw applied to d."""
    H = 16
    erp = _random_erp(H, seed=columns % 7)
    rotation = yaw_matrix(torch.tensor(2 * math.pi * columns / (2 * H), dtype=torch.float64))
    torch.testing.assert_close(rotate_erp(erp, rotation), torch.roll(erp, columns, dims=-1), atol=1e-5, rtol=0)
    mask = erp[:, :1] > 0.5
    assert torch.equal(rotate_erp(mask, rotation, "nearest"), torch.roll(mask, columns, dims=-1))


def test_half_pixel_yaw_interpolates_across_the_seam():
    """A half-pixel turn averages neighbouring columns, column 0 with column W-1 (the seam wraps)."""
    erp = _random_erp(8, channels=2, seed=3, dtype=torch.float64)
    out = rotate_erp(erp, yaw_matrix(torch.tensor(math.pi / 16, dtype=torch.float64)))
    expected = 0.5 * (erp + torch.roll(erp, 1, dims=-1))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out[..., 0], 0.5 * (erp[..., 0] + erp[..., -1]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("angles", [(0.0, 10.0, 0.0), (0.0, 0.0, -10.0), (30.0, -20.0, 15.0), (0.0, 60.0, 0.0)])
def test_rotation_of_the_ray_field_is_exact_up_to_interpolation(angles):
    """output(R d) = input(d): the field of input rays d becomes R^T d everywhere, seam and poles included."""
    H = 64
    rotation = ypr_to_matrix(*(torch.tensor(math.radians(a), dtype=torch.float64) for a in angles))
    rays = erp_rays(H, dtype=torch.float64)  # (H,W,3)
    out = rotate_erp(rays.permute(2, 0, 1)[None], rotation)[0]  # (3,H,W)
    expected = torch.einsum("hwj,jk->khw", rays, rotation)  # (3,H,W): R^T d for every output ray d
    # Bilinear interpolation of a smooth field: second order in the pixel size (pi/64 rad).
    assert float((out - expected).abs().max()) < 2e-3
    assert float((out - expected).abs().mean()) < 2e-4


def test_batched_rotations_and_rotating_back():
    """(B,3,3) rotations act per image; rotating classes by R then R^T lands most pixels home."""
    H = 32
    classes = render_erp(generate_scene(4), H).semantic.long()[None, None]  # (1,1,H,W)
    rotations = torch.stack([pitch_matrix(torch.tensor(0.2)), roll_matrix(torch.tensor(-0.15))])  # (2,3,3)
    stack = classes.expand(2, -1, -1, -1)
    turned = rotate_erp(stack, rotations, "nearest")
    assert torch.equal(turned[1:], rotate_erp(classes, rotations[1], "nearest"))
    back = rotate_erp(turned, rotations.transpose(1, 2), "nearest")
    same = (back == stack).double().mean()
    assert float(same) > 0.9  # only pixels next to class boundaries move
    assert set(turned.unique().tolist()) <= set(classes.unique().tolist())  # nearest never mixes classes


def test_matches_a_direct_render_of_the_rotated_room():
    H = 64
    scene = generate_scene(3)
    rotation = ypr_to_matrix(0.0, math.radians(10), math.radians(5))
    src = render_erp(scene, H).rgb  # (3,H,W)
    target = render_rays(scene, erp_rays(H) @ rotation).rgb.permute(2, 0, 1)  # rays R^T d, (3,H,W)
    error = (rotate_erp(src[None], rotation)[0] - target).abs()
    # Bilinear resampling of a textured room with sharp edges: edges dominate the error.
    assert float(error.mean()) < 0.015
    assert float((error < 0.05).double().mean()) > 0.9


def _equilib_rotate(erp: torch.Tensor, rotation: torch.Tensor, corrected: bool) -> torch.Tensor:
    """pyequilib's equi2equi in our frame: (C,H,W) -> (C,H,W), output(R d) = input(d).

    equi2equi reads the input at R_eq m for its output ray m, in its (forward, right, down)
    axes: R_eq = A R^T A^T. Corrected: the input shifted by one pixel with our padding (it
    reads one pixel right of and below the ray's pixel) and a 2H x 2W output whose odd rows
    and columns are our pixel centres (its grid puts pixel j at 2 pi j / W).
    """
    _, H, W = erp.shape
    rots = _zyx_angles((_AXES @ rotation.double().T @ _AXES.T)[None])
    if not corrected:
        return equi2equi(erp[None], rots=rots, z_down=True, mode="bilinear", clip_output=False)[0]
    shifted = pad_erp(erp[None])[..., :H, :W].contiguous()  # pixel (v,u) moves to (v+1,u+1)
    out = equi2equi(shifted, rots=rots, z_down=True, mode="bilinear", height=2 * H, width=2 * W, clip_output=False)
    return out[0, :, 1::2, 1::2]


def test_agreement_with_pyequilib_equi2equi():
    """The corrected equi2equi equals rotate_erp except where it reads across the seam or the south pole."""
    H, W = 32, 64
    erp = _random_erp(H, dtype=torch.float64)[0]
    rotation = ypr_to_matrix(0.0, math.radians(10), math.radians(5)).double()
    ours = rotate_erp(erp[None], rotation)[0]
    difference = (ours - _equilib_rotate(erp, rotation, corrected=True)).abs().amax(0)  # (H,W)
    # Where each output pixel reads, in continuous input coordinates (pixel centres at u + 0.5).
    grid = rotation_sampling_grid(rotation, H, dtype=torch.float64)[0]  # (H,W,2)
    x = (grid[..., 0] * (W + 2) + W) / 2
    y = (grid[..., 1] * (H + 2) + H) / 2
    # equi2equi has no wrap between the centres of columns W-2 and W-1 of the shifted input
    # (its reflection padding), and clamps rows below the centre of row H-2.
    broken = ((x > W - 1.5) & (x < W - 0.5)) | (y > H - 1.5)
    # Not 1e-12: pyequilib's pi is a float32 constant (sub-1e-5 pixel offsets).
    assert float(difference[~broken].max()) < 1e-5
    assert float(difference[broken].max()) > 0.05  # the library's seam is really wrong there
    raw = (ours - _equilib_rotate(erp, rotation, corrected=False)).abs()
    assert float(raw.mean()) > 0.1  # raw: half-pixel grid offsets everywhere


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="nearest"):
        rotate_erp(torch.zeros(1, 1, 4, 8, dtype=torch.int64), torch.eye(3), "bilinear")
    with pytest.raises(ValueError, match="2:1"):
        rotate_erp(torch.zeros(1, 1, 4, 6), torch.eye(3))
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        rotate_erp(torch.zeros(4, 8), torch.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        rotate_erp(torch.zeros(1, 1, 4, 8), torch.eye(4))
