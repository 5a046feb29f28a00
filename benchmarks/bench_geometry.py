"""`make bench-geometry`: our ERP<->patch geometry against pyequilib on the same inputs.

A 2048x1024 ERP image and the 20 icosahedron patches of 518x518 (80 degrees). Times are
medians of rounds in which every contender runs once in turn; ratios are pyequilib / ours,
measured in the same run. The headline re-projection includes computing the correspondences;
the cached row is what the label pipeline pays per panorama once a layout's correspondences
are computed.
"""

from __future__ import annotations

import math
import os

import torch
from equilib import equi2pers, pers2equi

from benchmarks.timing import interleaved_median_times, machine, table
from spherical.equilib_adapter import _equilib_rotation, _padded_fov, _zyx_angles
from spherical.layouts import icosahedron_layout
from spherical.reproject import patch_to_erp, patches_to_erp
from spherical.sampling import erp_to_patches

ERP_HEIGHT = 1024
PATCH = 518
REPEATS = 5


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

    mapping = patch_to_erp(cams, ERP_HEIGHT)
    load_before = os.getloadavg()[0]
    t = interleaved_median_times(
        {
            "ours_sample": lambda: erp_to_patches(erp, cams),
            "theirs_sample": lambda: equi2pers(
                erp_batch, rots, PATCH + 1, PATCH + 1, _padded_fov(cams), z_down=True, clip_output=False
            ),
            "ours_map": lambda: patch_to_erp(cams, ERP_HEIGHT),
            "ours_fuse": lambda: patches_to_erp(patches, mapping),
            "ours_reproject": lambda: patches_to_erp(patches, patch_to_erp(cams, ERP_HEIGHT)),
            "theirs_reproject": lambda: pers2equi(
                patches, inverse_rots, ERP_HEIGHT, 2 * ERP_HEIGHT, fov, z_down=True, clip_output=False
            ),
        },
        repeats=REPEATS,
    )
    ours_sample, theirs_sample = t["ours_sample"], t["theirs_sample"]
    ours_map, ours_fuse = t["ours_map"], t["ours_fuse"]
    ours_reproject, theirs_reproject = t["ours_reproject"], t["theirs_reproject"]
    load_after = os.getloadavg()[0]

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
    busy = max(load_before, load_after) > 0.5 * (os.cpu_count() or 1) + 1.0
    print(
        f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after"
        + (": other processes shared the cores, so these timings are not clean" if busy else "")
    )
    assert math.isfinite(ours_reproject)


if __name__ == "__main__":
    main()
