"""`make bench-geometry`: our ERP<->patch geometry against pyequilib on the same inputs.

A 2048x1024 ERP image and the 20 icosahedron patches of 518x518 (80 degrees). Times are
medians; ratios are pyequilib / ours, measured in the same run.
"""

from __future__ import annotations

import math

import torch
from equilib import equi2pers, pers2equi

from benchmarks.timing import machine, median_time, table
from spherical.equilib_adapter import _equilib_rotation, _padded_fov, _zyx_angles
from spherical.layouts import icosahedron_layout
from spherical.reproject import patch_to_erp, patches_to_erp
from spherical.sampling import erp_to_patches

ERP_HEIGHT = 1024
PATCH = 518


def main() -> None:
    torch.manual_seed(0)
    cams = icosahedron_layout().cameras(PATCH)
    n = len(cams)
    erp = torch.rand(1, 3, ERP_HEIGHT, 2 * ERP_HEIGHT)
    patches = torch.rand(n, 3, PATCH, PATCH)

    # pyequilib wants one ERP per rotation; the copies are made before timing.
    erp_batch = erp.expand(n, -1, -1, -1).contiguous()
    rots = _zyx_angles(_equilib_rotation(cams))
    inverse_rots = _zyx_angles(_equilib_rotation(cams).transpose(1, 2))
    fov = float(cams.fov_x_deg[0])

    ours_sample = median_time(lambda: erp_to_patches(erp, cams), repeats=5)
    theirs_sample = median_time(
        lambda: equi2pers(erp_batch, rots, PATCH + 1, PATCH + 1, _padded_fov(cams), z_down=True, clip_output=False),
        repeats=3,
    )
    mapping = patch_to_erp(cams, ERP_HEIGHT)
    ours_map = median_time(lambda: patch_to_erp(cams, ERP_HEIGHT), repeats=5)
    ours_fuse = median_time(lambda: patches_to_erp(patches, mapping), repeats=5)
    ours_reproject = median_time(lambda: patches_to_erp(patches, patch_to_erp(cams, ERP_HEIGHT)), repeats=5)
    theirs_reproject = median_time(
        lambda: pers2equi(patches, inverse_rots, ERP_HEIGHT, 2 * ERP_HEIGHT, fov, z_down=True, clip_output=False),
        repeats=3,
    )

    entries = len(mapping) / (ERP_HEIGHT * 2 * ERP_HEIGHT)
    visited = sum(fp.size for fp in mapping.footprints) / (ERP_HEIGHT * 2 * ERP_HEIGHT)
    rows = [
        (
            "ERP -> 20 patches (sampling)",
            f"{ours_sample:.3f}",
            f"{theirs_sample:.3f}",
            f"{theirs_sample / ours_sample:.1f}x",
        ),
        (
            "20 patches -> ERP (re-projection, fused)",
            f"{ours_reproject:.3f}",
            f"{theirs_reproject:.3f}",
            f"{theirs_reproject / ours_reproject:.1f}x",
        ),
        ("  of which correspondences", f"{ours_map:.3f}", "", ""),
        (
            "  of which sampling + fusion (cached correspondences)",
            f"{ours_fuse:.3f}",
            "",
            f"{theirs_reproject / ours_fuse:.1f}x",
        ),
    ]
    print(f"bench-geometry: ERP {2 * ERP_HEIGHT}x{ERP_HEIGHT}, {n} patches {PATCH}x{PATCH}, float32 RGB")
    print(f"machine: {machine()}")
    print(table(rows, ("operation", "mtpano (s)", "pyequilib (s)", "pyequilib / mtpano")))
    print(
        f"\nfootprints visit {visited:.2f} ERP pixels per ERP pixel for {entries:.2f} seen "
        f"(pyequilib's pers2equi: {n} full ERP passes, not fused)"
    )
    assert math.isfinite(ours_reproject)


if __name__ == "__main__":
    main()
