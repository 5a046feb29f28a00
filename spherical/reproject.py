"""Perspective patch -> ERP re-projection, computed on each patch's footprint only.

For every ERP pixel centre that a patch sees, `PatchToErp` holds one *entry*: the flat
ERP pixel index, the patch index and the continuous patch pixel coordinates (x, y) of the
pixel's ray (pixel centres at j + 0.5, i + 0.5). A pixel is seen when its ray lies in
front of the camera and inside the hull of the patch's pixel centres
(0.5 <= x <= w - 0.5, 0.5 <= y <= h - 0.5), so bilinear reads never extrapolate.

Only each patch's *footprint* is visited: the 16x16 ERP tiles whose bounding cones are
not entirely outside one of the patch's four frustum planes. Tiles wrap in longitude and
follow the patch's true shape at the poles, so 20 patches cost about as much as three
full-ERP passes, not twenty. Entries are grouped by patch, so fusion can run patch by
patch with bounded memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_lonlat, erp_width, lonlat_to_ray

SampleMode = Literal["bilinear", "nearest"]


TILE = 16  # ERP tile side in pixels: the unit in which footprints are culled


@dataclass(frozen=True)
class Footprint:
    """The ERP tiles (TILE x TILE pixel blocks, row-major ids) that may hold pixels one patch
    sees; every pixel the patch sees lies in one of them."""

    tiles: Tensor
    tile_size: int

    @property
    def size(self) -> int:
        """Number of ERP pixels visited for this patch."""
        return int(self.tiles.numel()) * self.tile_size**2


def _frustum_normals(cameras: PatchCameras) -> Tensor:
    """(N,4,3) unit world normals of the planes bounding each patch's pixel-centre hull.

    A direction d is inside the hull iff n . d >= 0 for all four planes (this also implies
    that d is in front of the camera, since the field of view is below 180 degrees).
    """
    h, w = cameras.height, cameras.width
    f = cameras.focal  # (N,)
    lo_x, hi_x = (0.5 - w / 2.0) / f, (w / 2.0 - 0.5) / f
    lo_y, hi_y = (0.5 - h / 2.0) / f, (h / 2.0 - 0.5) / f
    one, zero = torch.ones_like(f), torch.zeros_like(f)
    # c_x >= lo_x c_z, c_x <= hi_x c_z, and the same for c_y (camera frame, c_z > 0).
    normals = torch.stack(
        (
            torch.stack((one, zero, -lo_x), -1),
            torch.stack((-one, zero, hi_x), -1),
            torch.stack((zero, one, -lo_y), -1),
            torch.stack((zero, -one, hi_y), -1),
        ),
        1,
    )  # (N,4,3) camera frame
    normals = normals / torch.linalg.vector_norm(normals, dim=-1, keepdim=True)
    return torch.einsum("nab,nkb->nka", cameras.rotation, normals)  # (N,4,3) world frame


def _tile_cones(erp_height: int, tile: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Bounding cones of the ERP tiles: (T,3) unit axes and (T,) sin of their half-angles."""
    H, W = erp_height, erp_width(erp_height)
    rows, cols = -(-H // tile), -(-W // tile)
    # Tile edges in longitude/latitude (the last tile may be partial).
    v_edges = torch.clamp(torch.arange(rows + 1, dtype=torch.float64, device=device) * tile, max=H)
    u_edges = torch.clamp(torch.arange(cols + 1, dtype=torch.float64, device=device) * tile, max=W)
    lat_edges = math.pi / 2.0 - math.pi * v_edges / H
    lon_edges = 2.0 * math.pi * u_edges / W - math.pi
    lat_c = (lat_edges[:-1] + lat_edges[1:]) / 2.0
    lon_c = (lon_edges[:-1] + lon_edges[1:]) / 2.0
    axis = lonlat_to_ray(lon_c[None, :], lat_c[:, None])  # (rows,cols,3)
    # The farthest point of a longitude/latitude box from its centre is one of its corners.
    corners = [
        lonlat_to_ray(lon_edges[i : cols + i][None, :], lat_edges[j : rows + j][:, None])
        for i in (0, 1)
        for j in (0, 1)
    ]  # 4 x (rows,cols,3)
    cos_radius = torch.stack([(axis * c).sum(-1) for c in corners]).amin(0)  # (rows,cols)
    sin_radius = torch.sqrt((1.0 - cos_radius**2).clamp_min(0.0)) * 1.001 + 1e-9
    return axis.reshape(-1, 3).to(dtype), sin_radius.reshape(-1).to(dtype)


def patch_footprints(cameras: PatchCameras, erp_height: int, tile: int = TILE) -> list[Footprint]:
    """ERP footprints of every patch: the tiles whose bounding cone is not entirely
    outside one of the patch's frustum planes (conservative: no seen pixel is missed)."""
    axis, sin_radius = _tile_cones(erp_height, tile, torch.float64, cameras.device)
    normals = _frustum_normals(cameras.to(dtype=torch.float64))  # (N,4,3)
    dots = torch.einsum("nka,ta->nkt", normals, axis)  # (N,4,T)
    keep = (dots >= -sin_radius).all(dim=1)  # (N,T)
    return [Footprint(torch.nonzero(k).squeeze(1), tile) for k in keep]


@dataclass(frozen=True)
class PatchToErp:
    """Correspondences from ERP pixels to the patches that see them (see module doc).

    Fields:
        erp_height: H of the ERP grid (W = 2H).
        patch_height, patch_width: patch size (h, w).
        erp_index: (M,) int32 flat ERP pixel index v * W + u of each entry.
        x, y: (M,) continuous patch pixel coordinates of each entry, in the cameras' dtype.
        offsets: N + 1 ints; the entries of patch n are [offsets[n], offsets[n + 1]).
        footprints: the ERP box visited for each patch.
    """

    erp_height: int
    patch_height: int
    patch_width: int
    erp_index: Tensor
    x: Tensor
    y: Tensor
    offsets: tuple[int, ...]
    footprints: tuple[Footprint, ...]

    @property
    def erp_width(self) -> int:
        return erp_width(self.erp_height)

    @property
    def num_patches(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.erp_index.shape[0]

    @property
    def patch_index(self) -> Tensor:
        """(M,) int64 patch of each entry (non-decreasing)."""
        sizes = torch.tensor(self.offsets, device=self.erp_index.device).diff()
        return torch.repeat_interleave(torch.arange(self.num_patches, device=sizes.device), sizes)

    def entries_of(self, patch: int) -> slice:
        """Slice of the entries that belong to `patch`."""
        return slice(self.offsets[patch], self.offsets[patch + 1])

    def to(self, device: torch.device | str) -> PatchToErp:
        return PatchToErp(
            self.erp_height,
            self.patch_height,
            self.patch_width,
            self.erp_index.to(device),
            self.x.to(device),
            self.y.to(device),
            self.offsets,
            self.footprints,
        )

    def grid(self, patch: int) -> Tensor:
        """(1,1,M_n,2) normalised grid_sample coordinates of the entries of `patch`."""
        sl = self.entries_of(patch)
        gx = 2.0 * self.x[sl] / self.patch_width - 1.0
        gy = 2.0 * self.y[sl] / self.patch_height - 1.0
        return torch.stack((gx, gy), -1)[None, None]  # (1,1,M_n,2)

    def sample_patch(self, values: Tensor, patch: int, mode: SampleMode = "bilinear") -> Tensor:
        """Read one patch's map at its entries.

        Args:
            values: (C,h,w) map of patch `patch` (floating, or integer with mode="nearest").
        Returns:
            (C, M_n) values at the entries of that patch, in the dtype of `values`.
        """
        is_float = values.is_floating_point()
        if not is_float and mode != "nearest":
            raise ValueError("integer label maps can only be sampled with mode='nearest'")
        work = values if values.dtype in (torch.float32, torch.float64) else values.float()
        grid = self.grid(patch).to(device=work.device, dtype=work.dtype)
        out = F.grid_sample(work[None], grid, mode=mode, padding_mode="border", align_corners=False)
        out = out[0, :, 0]  # (1,C,1,M_n) -> (C,M_n)
        return out.to(values.dtype) if is_float else out.round().to(values.dtype)

    def sample(self, values: Tensor, mode: SampleMode = "bilinear") -> Tensor:
        """Read every patch's map at its entries: (N,C,h,w) -> (C,M)."""
        if values.shape[0] != self.num_patches or values.shape[-2:] != (
            self.patch_height,
            self.patch_width,
        ):
            raise ValueError(
                f"expected ({self.num_patches},C,{self.patch_height},{self.patch_width}) "
                f"patch maps, got {tuple(values.shape)}"
            )
        return torch.cat([self.sample_patch(values[n], n, mode) for n in range(self.num_patches)], 1)

    def scatter_sum(
        self, entry_values: Tensor, weights: Tensor | None = None, entries: slice | None = None
    ) -> tuple[Tensor, Tensor]:
        """Weighted sums of entry values per ERP pixel.

        Args:
            entry_values: (C,M') float values at the entries (all of them, or `entries`).
            weights: (M',) non-negative entry weights; 1 when None.
            entries: the entries the values belong to (e.g. `entries_of(n)`); all when None.
        Returns:
            sums: (C,H,W) sum of weight * value; weight_sums: (H,W) sum of weights.
        """
        C = entry_values.shape[0]
        H, W = self.erp_height, self.erp_width
        device, dtype = entry_values.device, entry_values.dtype
        index = self.erp_index[entries if entries is not None else slice(None)].to(device)
        w = torch.ones(index.shape[0], dtype=dtype, device=device) if weights is None else weights.to(dtype)
        weighted = entry_values * w
        sums = torch.zeros(C, H * W, dtype=dtype, device=device)
        if device.type == "cpu":
            # One 1-D index_add per channel is several times faster on CPU than one 2-D one.
            for c in range(C):
                sums[c].index_add_(0, index, weighted[c])
        else:
            sums.index_add_(1, index, weighted)
        weight_sums = torch.zeros(H * W, dtype=dtype, device=device).index_add_(0, index, w)
        return sums.view(C, H, W), weight_sums.view(H, W)

    def counts(self) -> Tensor:
        """(H,W) int64 number of patches that see each ERP pixel."""
        hw = self.erp_height * self.erp_width
        return torch.bincount(self.erp_index, minlength=hw).view(self.erp_height, self.erp_width)

    def best_entry(self, scores: Tensor) -> Tensor:
        """For each ERP pixel, the entry with the highest score (first one on ties).

        Args:
            scores: (M,) float entry scores.
        Returns:
            (H,W) int64 entry index, -1 where no patch sees the pixel.
        """
        hw = self.erp_height * self.erp_width
        index = self.erp_index.to(scores.device)
        best = torch.full((hw,), -math.inf, dtype=scores.dtype, device=scores.device)
        best = best.scatter_reduce(0, index, scores, reduce="amax")
        entry_ids = torch.arange(len(self), device=scores.device)
        candidate = torch.where(scores >= best[index], entry_ids, len(self))
        first = torch.full((hw,), len(self), dtype=torch.int64, device=scores.device)
        first = first.scatter_reduce(0, index, candidate, reduce="amin")
        return torch.where(first == len(self), -1, first).view(self.erp_height, self.erp_width)

    def centre_distance(self) -> Tensor:
        """(M,) distance of each entry from its patch centre, in units of half the patch width."""
        dx = self.x - self.patch_width / 2.0
        dy = self.y - self.patch_height / 2.0
        return torch.sqrt(dx * dx + dy * dy) / (self.patch_width / 2.0)


def patch_to_erp(cameras: PatchCameras, erp_height: int, tile: int = TILE) -> PatchToErp:
    """Correspondences between ERP pixels (H = erp_height) and the patches of `cameras`.

    Computed in the cameras' dtype on their device; only footprint tiles are visited.
    """
    H, W = erp_height, erp_width(erp_height)
    dtype, device = cameras.dtype, cameras.device
    h, w = cameras.height, cameras.width
    lon, lat = erp_lonlat(H, dtype=dtype, device=device)
    sin_lon, cos_lon = torch.sin(lon), torch.cos(lon)
    sin_lat, cos_lat = torch.sin(lat), torch.cos(lat)
    focal = cameras.focal
    footprints = patch_footprints(cameras, erp_height, tile)
    tile_cols = -(-W // tile)
    offsets_in_tile = torch.arange(tile, device=device)

    erp_index, xs, ys, offsets = [], [], [], [0]
    for n, fp in enumerate(footprints):
        rows = (fp.tiles // tile_cols)[:, None] * tile + offsets_in_tile  # (T,tile)
        cols = (fp.tiles % tile_cols)[:, None] * tile + offsets_in_tile  # (T,tile)
        inside = (rows < H)[:, :, None] & (cols < W)[:, None, :]  # (T,tile,tile) partial tiles
        rows, cols = rows.clamp(max=H - 1), cols.clamp(max=W - 1)
        R = cameras.rotation[n]
        cl, sl = cos_lat[rows][:, :, None], sin_lat[rows][:, :, None]  # (T,tile,1)
        sp, cp = sin_lon[cols][:, None, :], cos_lon[cols][:, None, :]  # (T,1,tile)
        # Camera-frame components of the ERP rays: c_k = sum_a R[a,k] d_a, with
        # d = (cos(lat) sin(lon), -sin(lat), cos(lat) cos(lon)); each (T,tile,tile).
        cam = [cl * (R[0, k] * sp + R[2, k] * cp) - R[1, k] * sl for k in range(3)]
        z = cam[2]
        x = focal[n] * cam[0] / z + w / 2.0
        y = focal[n] * cam[1] / z + h / 2.0
        valid = inside & (z > 0) & (x >= 0.5) & (x <= w - 0.5) & (y >= 0.5) & (y <= h - 0.5)
        flat = (rows[:, :, None] * W + cols[:, None, :])[valid]
        erp_index.append(flat.to(torch.int32))
        xs.append(x[valid])
        ys.append(y[valid])
        offsets.append(offsets[-1] + flat.numel())

    return PatchToErp(
        erp_height=H,
        patch_height=h,
        patch_width=w,
        erp_index=torch.cat(erp_index),
        x=torch.cat(xs),
        y=torch.cat(ys),
        offsets=tuple(offsets),
        footprints=tuple(footprints),
    )


def patches_to_erp(
    values: Tensor,
    mapping: PatchToErp,
    mode: SampleMode = "bilinear",
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Re-project patch maps into one ERP map by weighted averaging.

    Args:
        values: (N,C,h,w) float patch maps.
        mapping: correspondences of the same N cameras (`patch_to_erp`).
        mode: how patch maps are read at sub-pixel positions.
        weights: (M,) entry weights (e.g. falling off towards patch borders); 1 when None.
    Returns:
        erp: (C,H,W) weighted mean, NaN where no patch sees the pixel.
        weight_sums: (H,W) total weight per pixel.
    """
    entry_values = mapping.sample(values, mode)  # (C,M)
    sums, weight_sums = mapping.scatter_sum(entry_values, weights)
    erp = torch.where(weight_sums > 0, sums / weight_sums, torch.nan)
    return erp, weight_sums
