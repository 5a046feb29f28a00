"""Perspective patch -> ERP re-projection, computed on each patch's footprint only.

For every ERP pixel centre that a patch sees, `PatchToErp` holds one *entry*: the flat
ERP pixel index, the patch index and the continuous patch pixel coordinates (x, y) of the
pixel's ray (pixel centres at j + 0.5, i + 0.5). A pixel is seen when its ray lies in
front of the camera and inside the hull of the patch's pixel centres
(0.5 <= x <= w - 0.5, 0.5 <= y <= h - 0.5), so bilinear reads never extrapolate.

Only each patch's *footprint* is visited: the 16x16 ERP tiles whose bounding cones are
not entirely outside one of the patch's four frustum planes. Tiles wrap in longitude and
follow the patch's true shape at the poles, so 20 patches cost about as much as three
full-ERP passes, not twenty. Tiles whose cones lie entirely inside all four planes (most
of a footprint) are taken whole; only the tiles on a patch's border are tested pixel by
pixel. Entries are grouped by patch, so fusion runs patch by patch with bounded memory.

`SlotLayout` stores the entries per pixel instead (the s-th patch that sees a pixel in slot s),
so that sums, maxima and counts over the patches that see each pixel are a few elementwise
passes; `read_points` reads a map at arbitrary points with one grid_sample call, and
`BilinearCorners` says which four map pixels, with which weights, grid_sample reads a point from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_lonlat, erp_width, lonlat_grid_to_ray

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
    axis = lonlat_grid_to_ray(lon_c, lat_c)  # (rows,cols,3)
    # The farthest point of a longitude/latitude box from its centre is one of its corners.
    edge_rays = lonlat_grid_to_ray(lon_edges, lat_edges)  # (rows+1,cols+1,3)
    corners = [edge_rays[j : rows + j, i : cols + i] for i in (0, 1) for j in (0, 1)]  # 4 x (rows,cols,3)
    cos_radius = torch.stack([(axis * c).sum(-1) for c in corners]).amin(0)  # (rows,cols)
    sin_radius = torch.sqrt((1.0 - cos_radius**2).clamp_min(0.0)) * 1.001 + 1e-9
    return axis.reshape(-1, 3).to(dtype), sin_radius.reshape(-1).to(dtype)


def _classify_tiles(cameras: PatchCameras, erp_height: int, tile: int) -> tuple[Tensor, Tensor]:
    """(N,T) bool masks over the ERP tiles: `touched` tiles are not entirely outside any of a
    patch's four frustum planes (they may hold seen pixels: conservative); `inner` tiles are
    entirely inside all four (every one of their pixels is seen)."""
    axis, sin_radius = _tile_cones(erp_height, tile, torch.float64, cameras.device)
    normals = _frustum_normals(cameras.to(dtype=torch.float64))  # (N,4,3)
    dots = torch.einsum("nka,ta->nkt", normals, axis)  # (N,4,T)
    touched = (dots >= -sin_radius).all(dim=1)  # (N,T)
    inner = (dots >= sin_radius).all(dim=1)  # (N,T)
    H, W = erp_height, erp_width(erp_height)
    if H % tile or W % tile:
        # Partial tiles (last row / column) have out-of-range pixels: never treat them as inner.
        partial = torch.zeros(-(-H // tile), -(-W // tile), dtype=torch.bool, device=cameras.device)
        partial[-1, :] = H % tile != 0
        partial[:, -1] |= W % tile != 0
        inner &= ~partial.flatten()
    return touched, inner


def patch_footprints(cameras: PatchCameras, erp_height: int, tile: int = TILE) -> list[Footprint]:
    """ERP footprints of every patch: the tiles whose bounding cone is not entirely
    outside one of the patch's frustum planes (conservative: no seen pixel is missed)."""
    touched, _ = _classify_tiles(cameras, erp_height, tile)
    return [Footprint(torch.nonzero(k).squeeze(1), tile) for k in touched]


@dataclass(frozen=True)
class SlotLayout:
    """A compact per-pixel layout of the M entries of a `PatchToErp`, in which reducing over the
    patches that see each pixel is a few elementwise passes.

    Pixels are taken in *compact order*: the ones seen by the most patches first (then by
    raster index). Slot s of pixel q holds the entry of the (s+1)-th patch, in patch order,
    that sees q; slot s of every pixel seen more than s times is stored contiguously, pixels in
    compact order, so slot s is positions [starts[s], starts[s+1]) and covers compact pixels
    [0, starts[s+1] - starts[s]). Every position holds exactly one entry.

    Fields:
        position: (M,) int64 position of each entry (in the mapping's order).
        entry: (M,) int32 the entry (mapping order) at each position: the inverse of `position`.
            int32, as `rank`: a gather of millions of values with it reads half the index
            bytes of an int64 one, and takes half the time on a CPU.
        starts: S + 1 ints, S the most patches that see one pixel.
        order: (H*W,) int64 raster index v * W + u of each compact pixel.
        rank: (H*W,) int32 compact index of each raster pixel (the inverse of `order`).
        count: (H*W,) int64 patches that see each pixel, raster order.
    """

    position: Tensor
    entry: Tensor
    starts: tuple[int, ...]
    order: Tensor
    rank: Tensor
    count: Tensor

    @property
    def slots(self) -> int:
        return len(self.starts) - 1

    def slot(self, s: int) -> slice:
        """Positions of slot s."""
        return slice(self.starts[s], self.starts[s + 1])

    def reduce(self, values: Tensor, op: str = "sum", overwrite: bool = False) -> Tensor:
        """Per-pixel reduction over the slots: (..., M) in position order -> (..., H*W) in compact
        order; op is "sum", "amax" or "amin" (booleans are counted, as int32; other integers
        keep their dtype). Slots are taken in order, so a sum adds a pixel's patches in patch
        order. Pixels without entries get 0 (sum) or the lowest / highest value of the dtype
        (amax / amin: -inf / +inf for floats). With `overwrite`, a `values` that the caller no
        longer needs may hold the result (no copy when every pixel is seen)."""
        if values.dtype == torch.bool:
            values, overwrite = values.to(torch.int32 if op == "sum" else torch.float32), True
        if values.is_floating_point():
            low, high = -math.inf, math.inf
        else:
            low, high = torch.iinfo(values.dtype).min, torch.iinfo(values.dtype).max
        fill = {"sum": 0, "amax": low, "amin": high}[op]
        first = values[..., self.slot(0)] if self.slots else values[..., :0]
        if overwrite and first.shape[-1] == len(self.order):
            out = first
        else:
            out = torch.empty((*values.shape[:-1], len(self.order)), dtype=values.dtype, device=values.device)
            out[..., : first.shape[-1]] = first
            out[..., first.shape[-1] :] = fill
        for s in range(1, self.slots):
            part = values[..., self.slot(s)]
            head = out[..., : part.shape[-1]]
            if op == "sum":
                head += part
            elif op == "amax":
                torch.maximum(head, part, out=head)
            else:
                torch.minimum(head, part, out=head)
        return out

    def reduce_argmax(self, values: Tensor, labels: Tensor) -> Tensor:
        """Per pixel, the label (M,) of its slot with the largest value (M,) (the first on ties),
        in compact order; -1 for pixels without entries."""
        n = self.starts[1] if self.slots else 0
        best = values[:n].clone()
        out = torch.full((len(self.order),), -1, dtype=labels.dtype, device=labels.device)
        out[:n] = labels[:n]
        for s in range(1, self.slots):
            part, part_labels = values[self.slot(s)], labels[self.slot(s)]
            head, head_labels = best[: len(part)], out[: len(part)]
            torch.where(part > head, part_labels, head_labels, out=head_labels)
            torch.maximum(head, part, out=head)
        return out

    def to_slots(self, values: Tensor, out: Tensor | None = None) -> Tensor:
        """(..., M) per-entry values in the mapping's order -> the same in position order,
        written into `out` (contiguous, of the same shape and dtype) when given."""
        return _gather_last(values, self.entry, out)

    def pixels_at(self, positions: Tensor) -> Tensor:
        """(R,) int64 compact pixel of each of the (R,) `positions`."""
        starts = torch.tensor(self.starts, device=positions.device)
        slot = torch.searchsorted(starts[1:], positions, right=True)  # (R,) the slot of each position
        return positions - starts[slot]

    def broadcast(self, pixel_values: Tensor) -> Tensor:
        """Per-pixel values (..., H*W) in compact order -> (..., M) the value of each slot's pixel."""
        return torch.cat([pixel_values[..., : self.starts[s + 1] - self.starts[s]] for s in range(self.slots)], -1)

    def differs(self, values: Tensor, pixel_values: Tensor) -> Tensor:
        """(M,) bool `values` (M,) != `broadcast(pixel_values)` ((H*W,) compact order), slot by
        slot, without the broadcast copy."""
        out = torch.empty(values.shape, dtype=torch.bool, device=values.device)
        for s in range(self.slots):
            part = self.slot(s)
            torch.ne(values[part], pixel_values[: part.stop - part.start], out=out[part])
        return out

    def pairs(self, max_pairs: int) -> Tensor:
        """Positions (K,2) of an even subsample of the pairs of entries that see the same pixel.

        All pairs are listed by gap g = 1..S-1 between their slots, then by the pixel's raster
        index, then by the first slot s (the pair is slots s and s + g); every ceil(N /
        max_pairs)-th of the N pairs is kept, in that order. Computed per (g, s) from running
        counts, without listing all the pairs.
        """
        device = self.count.device
        total = sum(int((self.count - g).clamp_min(0).sum()) for g in range(1, self.slots))
        stride = max(1, math.ceil(total / max(1, max_pairs)))
        keys, firsts, seconds = [], [], []
        offset = 0
        for g in range(1, self.slots):
            per_pixel = (self.count - g).clamp_min(0)  # pairs of gap g at each pixel
            base = offset + torch.cumsum(per_pixel, 0) - per_pixel  # index of the pixel's first pair
            for s in range(self.slots - g):
                key = base + s
                pixels = torch.nonzero((per_pixel > s) & (key % stride == 0)).squeeze(1)
                keys.append(key[pixels])
                firsts.append(self.starts[s] + self.rank[pixels])
                seconds.append(self.starts[s + g] + self.rank[pixels])
            offset += int(per_pixel.sum())
        if not keys:
            return torch.zeros(0, 2, dtype=torch.int64, device=device)
        order = torch.argsort(torch.cat(keys))
        return torch.stack((torch.cat(firsts)[order], torch.cat(seconds)[order]), 1).long()

    def to_raster(self, values: Tensor) -> Tensor:
        """(..., H*W) values in compact order -> (..., H*W) in raster order."""
        return _gather_last(values, self.rank)


def _gather_last(values: Tensor, index: Tensor, out: Tensor | None = None) -> Tensor:
    """(..., n) values -> (..., m) `values[..., index]` for an (m,) index, written into `out`
    (contiguous, of the result's shape and dtype) when given. Several rows in one index_select
    along the last dimension, which reads each index once: on a CPU three rows of 1.47M
    entries 4.8-5.2 ms -> 3.5 ms, of 7.2M 23.5 -> 18.8 ms, against one index_select a row.
    1-D values stay 1-D: at 7.2M a 1-D index_select takes 7.5 ms, one along dim 1 of (1, n) 8.9 ms."""
    if out is None:
        out = values.new_empty((*values.shape[:-1], len(index)))
    assert out.shape == (*values.shape[:-1], len(index)) and out.dtype == values.dtype, "bad out"
    assert out.is_contiguous(), "bad out"
    if values.dim() == 1:
        return torch.index_select(values, 0, index, out=out)
    torch.index_select(values.reshape(-1, values.shape[-1]), 1, index, out=out.view(-1, len(index)))  # (R,n) -> (R,m)
    return out


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
        scale = torch.tensor([2.0 / self.patch_width, 2.0 / self.patch_height], dtype=self.x.dtype)
        grid = torch.stack((self.x[sl], self.y[sl]), -1).mul_(scale.to(self.x.device)).sub_(1.0)  # (M_n,2)
        return grid[None, None]  # (1,1,M_n,2)

    def _read(self, values: Tensor, patch: int, mode: SampleMode) -> list[tuple[slice, Tensor]]:
        """Read one patch's map (C,h,w) at its entries (see `read_points`). Returns (entry slice,
        (C,L) values) per batch row, in the work dtype (float32 or float64), in entry order."""
        sl = self.entries_of(patch)
        grid = self.grid(patch).to(device=values.device, dtype=values.dtype)[0, 0]  # (M_n,2)
        return [(slice(sl.start + r.start, sl.start + r.stop), out) for r, out in read_points(values, grid, mode)]

    @staticmethod
    def _work_values(values: Tensor, mode: SampleMode) -> Tensor:
        """`values` in the dtype that sampling runs in (float32 or float64)."""
        if not values.is_floating_point() and mode != "nearest":
            raise ValueError("integer label maps can only be sampled with mode='nearest'")
        return values if values.dtype in (torch.float32, torch.float64) else values.float()

    @staticmethod
    def _restore_dtype(out: Tensor, dtype: torch.dtype) -> Tensor:
        """Sampled values back in the dtype of the maps they were read from."""
        if dtype.is_floating_point:
            return out.to(dtype)
        return out.round_().to(dtype)

    def sample_patch(self, values: Tensor, patch: int, mode: SampleMode = "bilinear") -> Tensor:
        """Read one patch's map at its entries.

        Args:
            values: (C,h,w) map of patch `patch` (floating, or integer with mode="nearest").
        Returns:
            (C, M_n) values at the entries of that patch, in the dtype of `values`.
        """
        work = self._work_values(values, mode)
        pieces = [out for _, out in self._read(work, patch, mode)]
        out = torch.cat(pieces, 1) if pieces else work.new_empty(work.shape[0], 0)  # (C,M_n)
        return self._restore_dtype(out, values.dtype)

    def _check_maps(self, values: Tensor) -> None:
        """Raise unless `values` holds one (C,h,w) map per patch."""
        expected = (self.num_patches, self.patch_height, self.patch_width)
        if values.ndim != 4 or (values.shape[0], *values.shape[-2:]) != expected:
            raise ValueError(
                f"expected ({self.num_patches},C,{self.patch_height},{self.patch_width}) "
                f"patch maps, got {tuple(values.shape)}"
            )

    def sample(self, values: Tensor, mode: SampleMode = "bilinear") -> Tensor:
        """Read every patch's map at its entries: (N,C,h,w) -> (C,M)."""
        self._check_maps(values)
        work = self._work_values(values, mode)
        out = work.new_empty(work.shape[1], len(self))  # (C,M)
        for n in range(self.num_patches):
            for entries, piece in self._read(work[n], n, mode):
                out[:, entries] = piece
        return self._restore_dtype(out, values.dtype)

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
        if weights is not None:
            weights = weights.to(dtype=dtype, device=device)
            entry_values = entry_values * weights
        sums = torch.zeros(C, H * W, dtype=dtype, device=device)
        _index_add(sums, index, entry_values)
        return sums.view(C, H, W), _weight_sums(index, weights, H * W, dtype).view(H, W)

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

    def slot_layout(self) -> SlotLayout:
        """A compact per-pixel layout of the entries (see `SlotLayout`), without sorting."""
        index = self.erp_index.long()
        hw = self.erp_height * self.erp_width
        device = index.device
        count = torch.bincount(index, minlength=hw)
        slots = int(count.max()) if hw else 0
        # Most-seen pixels first, then by raster index: a counting sort.
        order = torch.cat([torch.nonzero(count == c).squeeze(1) for c in range(slots, -1, -1)])
        rank = torch.empty_like(order)
        rank[order] = torch.arange(hw, device=device)
        # The slot of an entry: how many patches before its own see its pixel.
        slot = torch.empty_like(index)
        earlier = torch.zeros(hw, dtype=torch.int64, device=device)
        for n in range(self.num_patches):
            pixels = index[self.entries_of(n)]
            slot[self.entries_of(n)] = earlier.index_select(0, pixels)
            earlier.index_add_(0, pixels, torch.ones_like(pixels))
        starts = [0]
        for s in range(slots):
            starts.append(starts[-1] + int((count > s).sum()))
        position = torch.tensor(starts[:-1], dtype=torch.int64, device=device)[slot] + rank[index]
        entry = torch.empty_like(position)
        entry[position] = torch.arange(len(position), device=device)
        return SlotLayout(position, entry.int(), tuple(starts), order, rank.int(), count)

    def slot_ordered(self) -> tuple[PatchToErp, SlotLayout]:
        """The same correspondences with each patch's entries sorted by their slot position, and
        their layout. A gather into slot order (`SlotLayout.to_slots`) then reads each patch's
        entries forward instead of a tile row at a time: 2.3x to 2.6x faster on a CPU (a row of
        5.9M entries at 1024 x 2048 labels: 7.6 ms to 3.3 ms)."""
        layout = self.slot_layout()
        slot_patch = self.patch_index.int()[layout.entry]  # (M,) the patch at each position
        # Each patch's positions in ascending order are its entries in the new order (a scan per
        # patch: 0.17 s at 1024 x 2048 labels, FoV 90°, against 0.27 s for an argsort).
        position = torch.cat([torch.nonzero(slot_patch == n).squeeze(1) for n in range(self.num_patches)])
        order = layout.entry[position]  # (M,) the entry (old order) of each entry of the new order
        entry = torch.empty_like(position)
        entry[position] = torch.arange(len(position), device=position.device)
        mapping = replace(self, erp_index=self.erp_index[order], x=self.x[order], y=self.y[order])
        return mapping, SlotLayout(position, entry.int(), layout.starts, layout.order, layout.rank, layout.count)

    def centre_distance(self) -> Tensor:
        """(M,) distance of each entry from its patch centre, in units of half the patch width."""
        dx = self.x - self.patch_width / 2.0
        dy = self.y - self.patch_height / 2.0
        return torch.sqrt(dx * dx + dy * dy) / (self.patch_width / 2.0)


def read_points(values: Tensor, grid: Tensor, mode: SampleMode = "bilinear") -> list[tuple[range, Tensor]]:
    """Read a (C,h,w) map at L points with one grid_sample call (align_corners=False, border).

    The points are split into equal batch rows of one expanded (not copied) input, because the
    CPU kernel parallelises over batch rows only.

    Args:
        values: (C,h,w) float32 or float64 map.
        grid: (L,2) normalised (x, y) coordinates in [-1, 1], in the dtype of `values`.
    Returns:
        (point range, (C,L') values) per batch row, in point order; the values are views.
    """
    count = grid.shape[0]
    if count == 0:
        return []
    rows = min(torch.get_num_threads(), count) if values.device.type == "cpu" else 1
    length = -(-count // rows)
    if rows * length > count:
        grid = F.pad(grid, (0, 0, 0, rows * length - count))  # (rows*length,2), tail read and dropped
    out = _sample_rows(values[None].expand(rows, -1, -1, -1), grid.view(rows, 1, length, 2), mode)  # (rows,C,1,length)
    pieces = []
    for r, start in enumerate(range(0, count, length)):
        stop = min(start + length, count)
        pieces.append((range(start, stop), out[r, :, 0, : stop - start]))  # (C,L') view
    return pieces


def _sample_rows(values: Tensor, points: Tensor, mode: SampleMode) -> Tensor:
    """grid_sample as every point read of this module reads: (b,C,h,w) maps at (b,1,L,2)
    normalised points -> (b,C,1,L), align_corners=False, border padding."""
    return F.grid_sample(values, points, mode=mode, padding_mode="border", align_corners=False)


def sample_points(values: Tensor, grid: Tensor, mode: SampleMode = "bilinear") -> Tensor:
    """(C,h,w) map read at (L,2) normalised points (see `read_points`): (C,L) in its dtype."""
    pieces = [out for _, out in read_points(values, grid, mode)]
    return torch.cat(pieces, 1) if len(pieces) > 1 else (pieces[0] if pieces else values.new_empty(values.shape[0], 0))


@dataclass(frozen=True)
class BilinearCorners:
    """The four map pixels and weights with which grid_sample (bilinear, align_corners=False,
    border padding) reads L points of (h,w) maps, so that per-pixel statistics of a map can be
    interpolated without reading all of its channels.

    Fields:
        x0, y0: (L,) int16 column and row of each point's top-left pixel, clamped into the map.
            Its right and lower neighbours are x0 + 1 and y0 + 1, or x0 and y0 themselves on the
            last column and row, where their weight is 0.
        tx, ty: (L,) float32 weights of the right column and of the lower row, in [0, 1).
        height, width: the maps' (h, w), below 2^15.
    """

    x0: Tensor
    y0: Tensor
    tx: Tensor
    ty: Tensor
    height: int
    width: int

    @classmethod
    def of_grid(cls, grid: Tensor, height: int, width: int) -> BilinearCorners:
        """Corners of the normalised (L,2) float32 grid_sample points `grid` in (height, width)
        maps, computed as grid_sample computes them (in float32)."""
        if max(height, width) >= 1 << 15:
            raise ValueError(f"maps of {height}x{width} pixels are too large")
        size = torch.tensor([width, height], dtype=torch.float32, device=grid.device)
        pixel = ((grid.float() + 1.0) * size - 1.0) / 2.0  # (L,2) continuous pixel, centres at integers
        pixel = torch.minimum(pixel.clamp_min_(0.0), size - 1.0)  # border padding
        corner = pixel.floor()
        frac = pixel.sub_(corner)
        lo = corner.to(torch.int16)
        return cls(lo[:, 0], lo[:, 1], frac[:, 0], frac[:, 1], height, width)

    def read(self, points: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """The corners of `points`: (4,L') int32 flat map pixels y * w + x and (4,L') float32
        bilinear weights, in the order top-left, top-right, bottom-left, bottom-right."""
        x0, y0 = self.x0[points].int(), self.y0[points].int()
        tx, ty = self.tx[points], self.ty[points]
        top_left = y0 * self.width + x0
        right = (x0 < self.width - 1).int()
        below = (y0 < self.height - 1).int() * self.width
        flat = torch.stack((top_left, top_left + right, top_left + below, top_left + below + right))
        sx, sy = 1.0 - tx, 1.0 - ty
        return flat, torch.stack((sx * sy, tx * sy, sx * ty, tx * ty))


def _index_add(sums: Tensor, index: Tensor, values: Tensor) -> None:
    """sums (C,P) += values (C,L) at the columns `index` (L,) (repeated indices add up)."""
    if sums.device.type == "cpu":
        # One 1-D index_add per channel is several times faster on CPU than one 2-D one.
        for c in range(sums.shape[0]):
            sums[c].index_add_(0, index, values[c])
    else:
        sums.index_add_(1, index, values)


def _weight_sums(index: Tensor, weights: Tensor | None, size: int, dtype: torch.dtype) -> Tensor:
    """(size,) sums of the weights (L,) at `index` (L,); counts when `weights` is None."""
    if weights is None:
        return torch.bincount(index, minlength=size).to(dtype)
    return torch.zeros(size, dtype=dtype, device=index.device).index_add_(0, index, weights.to(dtype))


def _per_tile(values: Tensor, tile: int) -> Tensor:
    """(L,) per-pixel values -> (ceil(L/tile), tile), one row per tile; the last row is padded
    by repetition (the padded pixels lie outside the ERP and are masked out)."""
    pad = -values.shape[0] % tile
    return torch.cat((values, values[-1:].expand(pad))).view(-1, tile)


def patch_to_erp(cameras: PatchCameras, erp_height: int, tile: int = TILE) -> PatchToErp:
    """Correspondences between ERP pixels (H = erp_height) and the patches of `cameras`.

    Computed in the cameras' dtype on their device; only footprint tiles are visited. Tiles
    entirely inside a patch take all their pixels without a test; only the tiles on the
    patch border are tested pixel by pixel. A patch's entries list its inner tiles first,
    then the seen pixels of its border tiles.
    """
    H, W = erp_height, erp_width(erp_height)
    dtype, device = cameras.dtype, cameras.device
    h, w = cameras.height, cameras.width
    tiles_per_row = -(-W // tile)
    lon, lat = erp_lonlat(H, dtype=dtype, device=device)
    # Trigonometry of the pixel centres, one row of `tile` values per tile column / tile row.
    trig_lon = torch.stack((_per_tile(torch.sin(lon), tile), _per_tile(torch.cos(lon), tile)))  # (2,cols,tile)
    trig_lat = torch.stack((_per_tile(torch.cos(lat), tile), _per_tile(torch.sin(lat), tile)))  # (2,rows,tile)
    # Pixel-homogeneous coordinates of a world ray d: (X, Y, Z) = K R^T d, x = X/Z, y = Y/Z.
    # No float32 matmul anywhere below: a TF32 setting (made for the networks) would cost
    # sub-pixel accuracy on a GPU.
    K, R = cameras.intrinsics().double(), cameras.rotation.double()
    P = (K @ R.transpose(1, 2)).to(dtype)  # (N,3,3)
    P_sin_lon, P_sin_lat, P_cos_lon = P.permute(2, 0, 1)[..., None, None]  # (N,3,1,1) each: P[:, :, a]
    touched, inner = _classify_tiles(cameras, erp_height, tile)  # (N,T) each
    border = touched & ~inner
    steps = torch.arange(tile, dtype=torch.int32, device=device)
    pixel_in_tile = steps[:, None] * W + steps[None, :]  # (tile,tile) flat ERP offsets from a tile's corner

    def project(n: int, tiles: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """X, Y, Z (3,T,tile,tile) of the rays of the pixels of `tiles` (T,) in camera n, the
        tiles' rows and columns (T,) and the flat ERP indices of their pixels (T,tile,tile).

        With d = (cos(lat) sin(lon), -sin(lat), cos(lat) cos(lon)), each component is
        cos(lat) * (P[k,0] sin(lon) + P[k,2] cos(lon)) - P[k,1] sin(lat): the outer product
        of a per-row and a per-column vector, minus a per-row term.
        """
        tile_rows, tile_cols = tiles // tiles_per_row, tiles % tiles_per_row
        cos_lat, sin_lat = trig_lat.index_select(1, tile_rows)  # (T,tile) each, down a tile
        sin_lon, cos_lon = trig_lon.index_select(1, tile_cols)  # (T,tile) each, across a tile
        per_col = P_sin_lon[n] * sin_lon + P_cos_lon[n] * cos_lon  # (3,1,1) * (T,tile) -> (3,T,tile)
        per_row = P_sin_lat[n] * sin_lat  # (3,T,tile)
        XYZ = (cos_lat[:, :, None] * per_col[:, :, None, :]).sub_(per_row[..., None])  # (3,T,tile,tile)
        corner = (tile_rows * (tile * W) + tile_cols * tile).to(torch.int32)  # (T,) top-left pixel
        return XYZ, tile_rows, tile_cols, corner[:, None, None] + pixel_in_tile

    # Border tiles first: their counts fix the size of the outputs, which are then written once.
    border_entries = []
    for n in range(len(cameras)):
        (X, Y, Z), tile_rows, tile_cols, pixels = project(n, torch.nonzero(border[n]).squeeze(1))
        x, y = X.div_(Z), Y.div_(Z)  # (T,tile,tile) each
        # Seen: Z > 0, 0.5 <= x <= w - 0.5, 0.5 <= y <= h - 0.5. Clamping leaves exactly those
        # x and y unchanged (NaN, from Z = 0, never equals itself).
        valid = (x.clamp(0.5, w - 0.5) == x) & (y.clamp(0.5, h - 0.5) == y) & (Z > 0)
        if H % tile or W % tile:  # partial tiles: pixels beyond the last row / column
            valid &= ((tile_rows[:, None] * tile + steps) < H)[:, :, None]
            valid &= ((tile_cols[:, None] * tile + steps) < W)[:, None, :]
        seen = torch.nonzero(valid.view(-1)).squeeze(1)
        border_entries.append(tuple(t.view(-1).index_select(0, seen) for t in (pixels, x, y)))

    inner_sizes = (inner.sum(1) * tile**2).tolist()
    offsets = [0]
    for size, (index, _, _) in zip(inner_sizes, border_entries, strict=True):
        offsets.append(offsets[-1] + size + index.numel())
    erp_index = torch.empty(offsets[-1], dtype=torch.int32, device=device)
    xs = torch.empty(offsets[-1], dtype=dtype, device=device)
    ys = torch.empty(offsets[-1], dtype=dtype, device=device)
    for n, (size, found) in enumerate(zip(inner_sizes, border_entries, strict=True)):
        start, mid, stop = offsets[n], offsets[n] + size, offsets[n + 1]
        # Inner tiles: every pixel is seen, written straight into the outputs.
        (X, Y, Z), _, _, pixels = project(n, torch.nonzero(inner[n]).squeeze(1))
        erp_index[start:mid] = pixels.view(-1)
        torch.div(X, Z, out=xs[start:mid].view(X.shape))
        torch.div(Y, Z, out=ys[start:mid].view(Y.shape))
        for out, values in zip((erp_index, xs, ys), found, strict=True):
            out[mid:stop] = values

    return PatchToErp(
        erp_height=H,
        patch_height=h,
        patch_width=w,
        erp_index=erp_index,
        x=xs,
        y=ys,
        offsets=tuple(offsets),
        footprints=tuple(Footprint(torch.nonzero(k).squeeze(1), tile) for k in touched),
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
    mapping._check_maps(values)
    work = PatchToErp._work_values(values, mode)
    C, H, W = work.shape[1], mapping.erp_height, mapping.erp_width
    index = mapping.erp_index.to(work.device)
    if weights is not None:
        weights = weights.to(dtype=work.dtype, device=work.device)
    # Read and scatter patch by patch: the (C,M) entry values are never materialised.
    sums = torch.zeros(C, H * W, dtype=work.dtype, device=work.device)
    for n in range(mapping.num_patches):
        for entries, entry_values in mapping._read(work[n], n, mode):
            if weights is not None:
                entry_values = entry_values * weights[entries]
            _index_add(sums, index[entries], entry_values)
    weight_sums = _weight_sums(index, weights, H * W, work.dtype)
    erp = sums.div_(weight_sums).masked_fill_(weight_sums <= 0, math.nan)  # NaN where no patch sees it
    out_dtype = values.dtype if values.is_floating_point() else work.dtype
    return erp.view(C, H, W).to(out_dtype), weight_sums.view(H, W).to(out_dtype)
