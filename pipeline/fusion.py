"""Re-projection and fusion of teacher patch outputs into ERP labels with confidence.

`FusionGeometry` holds what depends only on the layout and the sizes (computed once per
worker): the patch -> ERP correspondences (`spherical.reproject.PatchToErp`, footprints only:
M *entries*, each an ERP pixel that a patch sees), and their slot layout
(`spherical.reproject.SlotLayout`): a pixel is seen by at most S patches (S = 5 for the
icosahedron layout), and the entries are stored slot by slot so that reducing over the
patches that see each pixel is a few elementwise passes, with no scatter. Per entry it keeps
the weights (falling off towards patch borders), the ray length ||c||, the patch, the
overlap pairs the depth alignment solves with, and how teacher maps of each resolution are
read.

`PanoramaFusion` takes one panorama's teacher outputs as they arrive, in any order and in
batches of patches, and keeps bounded state: per-entry depth and normals, and a few
per-entry figures of the class probabilities (see `PanoramaFusion.add_semantic`). Patches
are read one at a time into their entries (in the mapping's order, where a patch's entries
are contiguous, themselves in slot order); `finish()` puts them in slot order, aligns the
depth of the patches jointly (`pipeline.align`), fuses every task by weighted averaging and
derives per-pixel confidences from the agreement of overlapping patches and, where given,
the teachers' own confidence. Everything runs in torch on the teacher's device.

Frames and units follow docs/conventions.md: depth goes from patch z-depth to ERP range
(range = z * ||c||), normals from each camera frame to the world frame (n_w = R n_c).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.align import Alignment, align_affine_disparity, align_log_scales
from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, DepthKind
from spherical.camera import PatchCameras
from spherical.erp import erp_lonlat
from spherical.reproject import (
    BilinearCorners,
    PatchToErp,
    SlotLayout,
    patch_to_erp,
    read_points,
    sample_points,
)


@dataclass(frozen=True)
class FusionConfig:
    """How patches are weighted, aligned and turned into confidences."""

    # Share of a patch's half-size, from its border inwards, over which weights rise from ~0 to 1.
    border_ramp: float = 0.5
    # Floor of the weights, so pixels seen only near a patch border still get a label.
    min_weight: float = 1e-3
    # Align metric depth with one scale per patch (relative depth is always aligned).
    align_metric_depth: bool = True
    # Robust re-weighting rounds of the alignment.
    align_iterations: int = 3
    # Overlap pairs the alignment solves with (an even stride through all of them): a few
    # unknowns per patch need thousands of equations, not the millions a panorama has.
    align_max_pairs: int = 100_000
    # Relative depth spread between patches at which depth confidence falls to 1/e.
    depth_spread_scale: float = 0.05
    # Angular spread (degrees) between patches at which normal confidence falls to 1/e.
    normal_spread_deg: float = 10.0
    # Agreement factor of pixels that a single patch sees (no second opinion).
    single_view_agreement: float = 0.5
    # Classes of each entry's distribution whose probabilities are summed per pixel (0 = all):
    # the mass beyond the top few is negligible.
    semantic_top_k: int = 8
    # "border": weighted average of every patch that sees a pixel (weights falling off towards
    # the patch borders); "nearest": the label of the one patch that sees it nearest its
    # optical axis, no blending (the baseline of the experiment's teacher-patches arm).
    blend: str = "border"

    def __post_init__(self) -> None:
        if self.blend not in ("border", "nearest"):
            raise ValueError(f"unknown fusion blend {self.blend!r}: border or nearest")

    def to_json(self) -> dict[str, float | int | bool]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def border_weights(x: Tensor, y: Tensor, width: int, height: int, config: FusionConfig) -> Tensor:
    """(M,) fusion weights of patch coordinates (x, y): 1 in the patch's centre region, a
    raised-cosine fall-off to ~0 at its border, separable in x and y, floored at min_weight."""

    def ramp(t: Tensor) -> Tensor:  # t: distance to the nearest border in half-sizes, in (0, 1]
        s = (t / config.border_ramp).clamp(0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * s)

    tx = 1.0 - (2.0 * x / width - 1.0).abs()
    ty = 1.0 - (2.0 * y / height - 1.0).abs()
    return (ramp(tx) * ramp(ty)).clamp_min(config.min_weight)


@dataclass(frozen=True)
class AlignPairs:
    """The overlap pairs that the depth alignment solves with, read once per worker:
    row 0 holds each pair's first entry, row 1 its second. The pairs are an even subsample,
    at most `FusionConfig.align_max_pairs`, of the pairs of entries that see the same pixel
    from two patches (`SlotLayout.pairs`).

    Fields:
        entry: (2,K') int64 mapping-order index of the entries.
        ray_norm: (2,K') float32 their ||c||.
        patch: (2,K') int64 their patches.
        weight: (K',) float64 the pairs' weights, the product of the entries' border weights.
    """

    entry: Tensor
    ray_norm: Tensor
    patch: Tensor
    weight: Tensor

    @classmethod
    def of_slots(
        cls, pairs: Tensor, layout: SlotLayout, ray_norm: Tensor, patch: Tensor, weights: Tensor
    ) -> AlignPairs:
        """Pairs (K',2) of slots, with the slot-order (M,) ray norms, patches and border weights."""
        at = pairs.T.contiguous()  # (2,K')
        w = weights[at]
        return cls(layout.entry[at].long(), ray_norm[at], patch[at].long(), (w[0] * w[1]).double())

    def at(self, values: Tensor) -> Tensor:
        """(M,) per-entry values in mapping order -> (2,K') those of the pairs' entries."""
        return values.index_select(0, self.entry.view(-1)).view(self.entry.shape)  # (2K',) -> (2,K')


@dataclass(frozen=True)
class PixelWeights:
    """A task's fusion weights for one panorama, per slot and per pixel.

    Fields:
        slots: (M,) float32 each slot's border weight times its teacher's confidence, 0 where
            the teacher gave no valid value; slot order.
        total: (H*W,) float32 their sum per pixel; compact order, as the rest.
        teacher: (H*W,) float32 `total` over the sum of the valid slots' border weights (that
            clamped at 1e-12): the border-weighted mean teacher confidence, 0 where total is 0.
        count: (H*W,) int valid slots per pixel.
        has: (H*W,) bool total > 0.
        multi: (H*W,) bool count >= 2.
    """

    slots: Tensor
    total: Tensor
    teacher: Tensor
    count: Tensor
    has: Tensor
    multi: Tensor

    @classmethod
    def of(
        cls, slots: Tensor, total: Tensor, base_sum: Tensor, count: Tensor, multi: Tensor | None = None
    ) -> PixelWeights:
        """From the slots' weights, their sums, the sums of the valid slots' border weights and
        the valid counts; `multi` when the caller has it (the layout's own)."""
        teacher = total / base_sum.clamp_min(1e-12)
        return cls(slots, total, teacher, count, total > 0, count >= 2 if multi is None else multi)


@dataclass(frozen=True)
class FusionGeometry:
    """Layout-dependent fusion state, shared by every panorama (see the module doc).

    Per-entry arrays come in two orders: the *mapping's*, where the entries of patch n are
    `entries_of(n)`, and *slot order* (`layout.position` maps the first to the second).
    Per-pixel arrays are in the layout's compact pixel order.

    Fields:
        cameras: the P patch cameras, on the fusion device.
        mapping: ERP pixel <-> patch correspondences at label resolution (M entries), each
            patch's entries in the order of their slots (`PatchToErp.slot_ordered`).
        layout: the slots of the entries, and the compact pixel order.
        grid: (M,2) float32 normalised grid_sample coordinates of each entry in its patch,
            mapping order.
        entry_weights: (M,) float32 fusion weights of the entries (the border weights, or
            one-hot per pixel for the "nearest" blend), mapping order.
        entry_patch: (M,) int32 patch of each entry, mapping order.
        entry_ray_norm: (M,) float32 ||c|| of each entry's c_z = 1 camera ray, mapping order.
        weights: (M,) float32 the fusion weights, slot order.
        weight_sum: (H*W,) float32 the fusion weights' sum per pixel, compact order.
        patch: (M,) int32 patch of each entry, slot order (int32 as `SlotLayout.entry`).
        entry: (M,) int32 the mapping-order index of the entry in each slot.
        align: the overlap pairs of the depth alignment (`AlignPairs`).
        count: (H*W,) int64 patches that see each pixel, compact order.
        full: the weights of a task whose every slot is valid and that has no teacher
            confidence (the usual case), computed once.
        polar: (H*W,) bool pixels with |latitude| > 60 degrees, compact order.
        corners: per teacher map resolution (h, w), the (M,) int32 index of the map pixel at
            the top left of each entry's bilinear read, in the patches' maps (`map_cell`).
        buffers: scratch memory reused from patch to patch (`scratch`).
        spare: per-entry arrays given back by finished panoramas, reused by the next ones
            (`take`, `give`).
    """

    cameras: PatchCameras
    mapping: PatchToErp
    layout: SlotLayout
    grid: Tensor
    entry_weights: Tensor
    entry_patch: Tensor
    entry_ray_norm: Tensor
    weights: Tensor
    weight_sum: Tensor
    patch: Tensor
    entry: Tensor
    align: AlignPairs
    count: Tensor
    full: PixelWeights
    polar: Tensor
    corners: dict[tuple[int, int], Tensor] = field(default_factory=dict, compare=False, repr=False)
    buffers: dict[torch.dtype, Tensor] = field(default_factory=dict, compare=False, repr=False)
    spare: dict[tuple[tuple[int, ...], torch.dtype], list[Tensor]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, cameras: PatchCameras, erp_height: int, config: FusionConfig) -> FusionGeometry:
        """Correspondences, slots and weights for `cameras` at label height `erp_height`, on the
        cameras' device (float32 cameras give float32 sub-pixel coordinates)."""
        mapping, layout = patch_to_erp(cameras, erp_height).slot_ordered()
        h, w = cameras.height, cameras.width
        patch = mapping.patch_index
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=mapping.x.dtype, device=mapping.x.device)
        grid = torch.stack((mapping.x, mapping.y), -1).mul_(scale).sub_(1.0)  # (M,2), as `PatchToErp.grid`
        border = border_weights(mapping.x, mapping.y, w, h, config).float()
        focal = cameras.focal[patch]
        cx = (mapping.x - w / 2.0) / focal
        cy = (mapping.y - h / 2.0) / focal
        ray_norm = torch.sqrt(cx * cx + cy * cy + 1.0).float()
        weights = border
        if config.blend == "nearest":
            # Weight 1 for the entry of each pixel with the smallest tan(angle to the optical axis), 0 elsewhere.
            off_axis = layout.to_slots(cx * cx + cy * cy).float()
            nearest = off_axis == layout.broadcast(layout.reduce(off_axis.clone(), op="amin"))
            weights = nearest.float()[layout.position]  # slot order -> mapping order
        slot_ray_norm, slot_patch, slot_border = (layout.to_slots(a) for a in (ray_norm, patch, border))
        slot_weights = layout.to_slots(weights)
        weight_sum = layout.reduce(slot_weights)
        count = layout.count[layout.order]
        _, lat = erp_lonlat(erp_height, device=cameras.device)
        polar = (lat.abs() > math.radians(60.0))[:, None].expand(-1, 2 * erp_height).flatten()
        return cls(
            cameras=cameras,
            mapping=mapping,
            layout=layout,
            grid=grid.float(),
            entry_weights=weights,
            entry_patch=patch.int(),
            entry_ray_norm=ray_norm,
            weights=slot_weights,
            weight_sum=weight_sum,
            patch=slot_patch.int(),
            entry=layout.entry,
            align=AlignPairs.of_slots(
                layout.pairs(config.align_max_pairs), layout, slot_ray_norm, slot_patch, slot_border
            ),
            count=count,
            full=PixelWeights.of(slot_weights, weight_sum, weight_sum, count),
            polar=polar[layout.order],
        )

    @property
    def num_patches(self) -> int:
        return len(self.cameras)

    @property
    def num_entries(self) -> int:
        """M."""
        return len(self.grid)

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def entries_of(self, patch: int) -> slice:
        """Mapping-order slice of the entries of `patch`."""
        return self.mapping.entries_of(patch)

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A reusable uninitialised tensor of `shape` (one per dtype: a new request may reuse the
        memory of the previous one), so that per-patch temporaries do not fault in fresh pages."""
        size = math.prod(shape)
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[dtype] = torch.empty(size, dtype=dtype, device=self.device)
        return buffer[:size].view(shape)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """An uninitialised tensor of `shape`: one that was given back (`give`) if any, else a
        new one. Per-entry arrays are tens of MB at large label sizes (an (3,M) float32 array
        is 87 MB at 1024x2048, FoV 90°), and fresh memory costs more in page faults than most
        passes over it; panoramas follow each other, so the same few arrays serve them all."""
        kept = self.spare.get((tuple(shape), dtype))
        return kept.pop() if kept else torch.empty(shape, dtype=dtype, device=self.device)

    def give(self, *tensors: Tensor) -> None:
        """Give back tensors from `take` that nothing reads any more."""
        for t in tensors:
            self.spare.setdefault((tuple(t.shape), t.dtype), []).append(t)

    def map_cell(self, height: int, width: int) -> Tensor:
        """(M,) int32 index n * height * width + y0 * width + x0 of the map pixel at the top
        left of the four that grid_sample reads each entry from, in the patches' maps of
        (height, width) pixels one after the other (n the entry's patch; mapping order;
        `spherical.reproject.BilinearCorners`). Computed on first use."""
        key = (height, width)
        if key not in self.corners:
            corners = BilinearCorners.of_grid(self.grid, height, width)
            self.corners[key] = self.entry_patch * (height * width) + corners.y0.int() * width + corners.x0.int()
        return self.corners[key]

    def to_slots(self, values: Tensor, out: Tensor | None = None) -> Tensor:
        """(..., M) per-entry values in mapping order -> the same in slot order (into `out`)."""
        return self.layout.to_slots(values, out=out)


@dataclass
class FusedLabels:
    """One panorama's fused labels, on the fusion device; absent tasks are None.

    Fields:
        depth: (H,W) float32 range in metres (metric) or aligned inverse range (relative), NaN = none.
        depth_confidence: (H,W) float32 in [0,1].
        semantic: (H,W) int64 class ids, -1 = none.
        semantic_confidence: (H,W) float32 in [0,1].
        normals: (3,H,W) float32 unit world-frame normals, NaN = none.
        normals_confidence: (H,W) float32 in [0,1].
        stats: quality figures of the fusion (see `PanoramaFusion.finish`).
    """

    depth: Tensor | None = None
    depth_confidence: Tensor | None = None
    semantic: Tensor | None = None
    semantic_confidence: Tensor | None = None
    normals: Tensor | None = None
    normals_confidence: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


# A patch's semantic probability map is kept until the panorama is finished only up to this
# size (a Mask2Former map of 150 classes at 130 x 130 is 10 MB); larger maps are fused exactly
# at once instead, which is slower but keeps memory bounded.
_KEEP_MAP_BYTES = 64 << 20


def _top_class(
    volume: Tensor, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A top class of every map pixel of b maps of (C,S') class probabilities, its value, and
    a bound on every other class's value.

    A first pass screens each map's classes: one whose values all lie in [0, _QUIET] (read as
    integers: the smallest not below 0 and the largest not above _QUIET's bits, which rules
    out negative, infinite and NaN values too) is quiet in that map, and the bound takes in
    the map's largest quiet value instead of reading those classes again. It pays when most
    classes are of nothing in a patch's view (2 to 4 of 150 are not quiet in the benchmark's
    maps): two reductions over every class and a few passes over the others, against four
    passes over every class without it.

    The other classes' values become integer keys: each value's bits with the sign and the
    low bits cleared order the values' magnitudes, and row codes written into those low bits
    carry the row. The largest key per pixel gives the top class, the runner-up's key its
    magnitude up to those bits, rounded up into a bound (`_few_top_keys`, `_top_keys_by_map`;
    integer comparisons are faster than float ones, which check for NaN). When the runner-up
    is within those bits of the largest, or the largest magnitude is a negative value's, or no
    class is above the quiet ones, the class found may not be the largest, but then the bound
    is at least its value, which the callers read as "not certain". A non-finite value's key
    (its exponent all ones) is above every finite one's.

    Args:
        volume: (b,C,S') float32, contiguous.
        scratch: optional (C,S') int32 buffer for the keys of a map.
    Returns:
        value: (b,S') the value of `top`, exact.
        top: (b,S') int32 the class, in [0, C).
        bound: (b,S') float32 upper bound of the value of every class but `top`.
        finite: (b,S') bool whether every class's value is finite (elsewhere the rest is void).
        loud: (b,A) int64 each map's classes that are not quiet, ascending, first in its row (A
            the most of any map; the rest of a row are quiet classes).
        count: (b,) int64 how many of a map's row in `loud` are not quiet.
        quiet_bound: (b,) float32 the largest value of a quiet class in each map (0: none).
    """
    b, C, S = volume.shape
    device = volume.device
    if C == 1:  # no other class to bound
        only = volume[:, 0]
        none = torch.zeros(b, S, dtype=torch.int32, device=device)
        return only.clone(), none, torch.zeros_like(only), torch.isfinite(only), *_every_class(b, C, device)
    bits = C.bit_length()
    if bits > 16:
        value, top = volume.max(1)
        bound = volume.scatter(1, top[:, None], -math.inf).amax(1)  # (b,C,S') copy
        return value, top.int(), bound, torch.isfinite(volume).all(1), *_every_class(b, C, device)
    mask = (1 << bits) - 1
    words = volume.view(torch.int32)  # (b,C,S')
    largest, lowest = _row_extremes(words.view(b * C, S))
    quiet = ((lowest >= 0) & (largest <= _QUIET_BITS)).view(b, C)
    largest = largest.view(b, C)
    quiet_bound = torch.where(quiet, largest, 0).amax(1).view(torch.float32)  # (b,) 0 where none is
    count = torch.count_nonzero(~quiet, 1)  # (b,) the classes each map reads
    most = int(count.max())
    loud = torch.argsort(quiet.to(torch.uint8), dim=1, stable=True)[:, :most]  # (b,most) the classes read first
    if most <= _FEW_LOUD:
        value, top, runner, finite = _few_top_keys(words, loud, count, mask)
    else:
        top, runner, finite = _top_keys_by_map(words, loud, count, mask, scratch)
        pixel = torch.arange(S, dtype=torch.int32, device=device)
        first = torch.arange(b, device=device)[:, None] * (C * S)  # (b,1) each map's first value
        at = (top.long() * S + pixel + first).view(-1)  # (b*S',) where each pixel's top value lies
        value = volume.view(-1).index_select(0, at).view(b, S)  # (b*S',) -> (b,S')
    # Up to the class bits: setting them rounds the runner-up's magnitude up.
    bound = torch.maximum((runner | mask).view(torch.float32), quiet_bound[:, None])
    return value, top, bound, finite, loud, count, quiet_bound


def _every_class(b: int, C: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """`_top_class`'s loud classes, counts and quiet bounds of b maps none of whose C classes
    is quiet."""
    every = torch.arange(C, device=device).expand(b, C)  # (b,C)
    return every, torch.full((b,), C, dtype=torch.int64, device=device), torch.zeros(b, device=device)


def _row_extremes(rows: Tensor) -> tuple[Tensor, Tensor]:
    """The largest and the smallest of each row of (R,S') int32 `rows`: (R,) each. Block by block
    of rows that fit in a core's cache, so that the second reduction reads them from there
    (the 20 maps of 150 x 130 x 130 of a panorama: 22.4 -> 17.4 ms). Elsewhere than on a CPU
    in two reductions, not a pair of kernels per block."""
    if rows.device.type != "cpu":
        return torch.amax(rows, 1), torch.amin(rows, 1)
    largest = torch.empty(len(rows), dtype=rows.dtype, device=rows.device)
    lowest = torch.empty_like(largest)
    for r in range(0, len(rows), _BLOCK_ROWS):
        block = rows[r : r + _BLOCK_ROWS]
        torch.amax(block, 1, out=largest[r : r + _BLOCK_ROWS])
        torch.amin(block, 1, out=lowest[r : r + _BLOCK_ROWS])
    return largest, lowest


def _few_top_keys(words: Tensor, loud: Tensor, count: Tensor, mask: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`_top_class`'s keys when no map reads more than a few classes: the classes read of all b
    maps gathered into (b,most,S') rows and keyed with their row + 1 (the rest of a map's rows
    quiet ones, keyed 0), and the largest and the runner-up kept row by row, three elementwise
    passes over (b,S') a row.

    Args:
        words: (b,C,S') int32 the maps' bits; loud: (b,most) and count: (b,) as `_top_class`'s.
    Returns:
        value: (b,S') float32 the top's value, read from the rows (in cache, unlike the maps);
        top: (b,S') int32 class (0 where a map reads none); runner: (b,S') int32 the
        runner-up's key (0: none); finite: (b,S') bool.
    """
    b, C, S = words.shape
    most = loud.shape[1]
    device = words.device
    if most == 0:
        zeros = torch.zeros(b, S, dtype=torch.int32, device=device)
        return words[:, 0].view(torch.float32).clone(), zeros, zeros.clone(), torch.ones_like(zeros, dtype=torch.bool)
    first = torch.arange(b, device=device)[:, None] * C  # (b,1) each map's first row
    rows = words.view(b * C, S).index_select(0, (loud + first).view(-1)).view(b, most, S)  # (b*most,S') -> (b,most,S')
    codes = torch.arange(1, most + 1, dtype=torch.int32, device=device)[:, None]  # (most,1) row + 1
    keys = _class_keys(rows, codes, mask)  # (b,most,S'), the rows kept for the values
    quiet = torch.arange(most, device=device) >= count[:, None]  # (b,most) the rows of quiet classes
    padded = torch.nonzero(quiet.view(-1)).squeeze(1)
    if padded.numel():
        keys.view(b * most, S).index_fill_(0, padded, 0)  # below every key
    top_key, runner = keys[:, 0], torch.zeros(b, S, dtype=torch.int32, device=device)
    for i in range(1, most):
        torch.maximum(runner, torch.minimum(top_key, keys[:, i]), out=runner)
        torch.maximum(top_key, keys[:, i], out=top_key)
    row = (top_key & mask).sub_(1).clamp_min_(0).long()  # (b,S') the top's row; 0 in a map that reads none
    value = rows.gather(1, row[:, None]).view(b, S).view(torch.float32)  # (b,1,S') -> (b,S')
    return value, loud.gather(1, row).int(), runner, top_key < _NONFINITE_KEY


def _top_keys_by_map(
    words: Tensor, loud: Tensor, count: Tensor, mask: int, scratch: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """`_top_class`'s keys map by map, for maps that read many classes: two integer
    max-reductions over a map's (A,S') keys, the top knocked out between them. Arguments and
    results as `_few_top_keys`'s but the value; scratch: optional (C,S') int32."""
    b, C, S = words.shape
    device = words.device
    if scratch is None:
        scratch = torch.empty(C, S, dtype=torch.int32, device=device)
    pixel = torch.arange(S, dtype=torch.int32, device=device)
    codes = torch.arange(1, C + 1, dtype=torch.int32, device=device)[:, None]  # (C,1) row + 1
    top = torch.zeros(b, S, dtype=torch.int32, device=device)  # class 0 where every class is quiet
    runner = torch.zeros(b, S, dtype=torch.int32, device=device)  # 0: below every key
    finite = torch.ones(b, S, dtype=torch.bool, device=device)
    for k, A in enumerate(count.tolist()):
        if not A:
            continue
        read = loud[k, :A]  # (A,) the classes read
        rows = words[k] if A == C else torch.index_select(words[k], 0, read, out=scratch[:A])  # (A,S')
        key = _class_keys(rows, codes[:A], mask, out=scratch[:A])
        top_key = torch.amax(key, 0)  # (S',)
        torch.lt(top_key, _NONFINITE_KEY, out=finite[k])
        row = (top_key & mask).sub_(1)
        if A > 1:  # knocked out (0 is below every key), the top leaves the runner-up the largest
            key.view(-1).index_fill_(0, (row * S).add_(pixel).long(), 0)
            torch.amax(key, 0, out=runner[k])
        if A < C:
            torch.index_select(read.int(), 0, row, out=top[k])
        else:
            top[k] = row
    return top, runner, finite


def _candidates(layout: SlotLayout, values: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """(H*W,) float32 per pixel the class of (about) its slot with the largest value, -1 where
    no slot: `values` (M,) float32, non-negative, and `classes` (M,) float32 ids in [-1, C),
    slot order.

    The values' bits with the low ones replaced by class codes are integer keys, and one
    integer max-reduction over the slots takes the largest: several times faster than a
    comparison and a selection per slot. A slot within those low bits of the largest may win
    instead: a candidate only has to be likely, as `_fused_semantic` certifies it or sums the
    pixel exactly.
    """
    bits = num_classes.bit_length()  # codes 0..C: the class + 1
    if bits > 16:
        return layout.reduce_argmax(values, classes)
    mask = (1 << bits) - 1
    keys = _class_keys(values, classes.to(torch.int32).add_(1), mask)
    top = layout.reduce(keys, op="amax", overwrite=True)  # (H*W,) int32, its lowest where no slot
    return (top & mask).sub_(1).float()


def _class_keys(values: Tensor, codes: Tensor, mask: int, out: Tensor | None = None) -> Tensor:
    """int32 keys of float32 `values`: the bits of their magnitudes with the low ones (`mask`)
    replaced by class `codes` (broadcast against `values`), so that an integer maximum orders
    the magnitudes up to those bits and carries its class. Written into `out` when given."""
    return torch.bitwise_and(values.view(torch.int32), _MAGNITUDE & ~mask, out=out).bitwise_or_(codes)


_MAGNITUDE = 0x7FFFFFFF  # a float32's bits but the sign
_NONFINITE_KEY = 0x7F800000  # exponent all ones: infinities and NaN
# A class whose probabilities stay within [0, _QUIET] over a whole map is not read for its top
# classes (`_top_class`): it only raises their bounds to its largest value. Low enough that a
# top class rarely needs an exact list because of it, high enough that a class of nothing in
# view stays under it across a patch.
_QUIET = 0.05
_QUIET_BITS = int(torch.tensor(_QUIET, dtype=torch.float32).view(torch.int32))
# Up to this many classes read per map, the top and runner-up are kept row by row for all maps
# at once (`_few_top_keys`); beyond it, two reductions per map cost less. Measured on a batch of
# 8 maps alone, the two cost alike up to about 16 classes and the rows cost twice as much at 64
# (35 ms against 16 ms); in the fusion of three tasks the rows took 23 ms a panorama against 28
# ms (medians of five interleaved runs, 2 to 4 classes read), in the semantic fusion alone the
# two were within the noise.
_FEW_LOUD = 16
# Rows per block of `_row_extremes`: 32 rows of a 130 x 130 map are 2.1 MB, about the L2 of two
# cores (24 to 50 rows measured alike, 8 as slow as no blocks).
_BLOCK_ROWS = 32

# Values `_read_classes` reads a pass (their int64 indices: 8 MB).
_READ_VALUES = 1 << 18
# `_summed_exactly` reads only the kept maps' loud classes first when their entries' every class
# makes at least this many values: at 512x1024 (about 1000 entries of 150 classes) semantic
# fusion takes 0.95x-0.98x its time, 0.94x-0.99x at 1024x2048; below, the extra calls cost more
# than they spare (a panorama of 32x64 labels 7.5-8.0 ms -> 8.4-10.0 ms with them).
_LOUD_READS_FROM = 1 << 17

# Rows of `PanoramaFusion.sem`.
_CLASS, _PROB, _BOUND = range(3)
# A top class wins over its rivals only when its sum times this exceeds what they could reach,
# a margin for the sums' float32 rounding.
_ROUNDING = 1.0 - 2.0**-16
# Bounds up to this are zero (a map of exact zeros gives bounds of a few subnormals): what
# they could add is far below float32 resolution.
_NEGLIGIBLE = 1e-30


def _read_classes(maps: Tensor, k: Tensor, classes: Tensor, flat: Tensor, bilinear: Tensor) -> Tensor:
    """(R,A) float32 the probabilities of `classes` (R,A) at R points of maps `k` (R,) of a run's
    (b,C,h',w') `maps`: bilinear, from the four map pixels `flat` (4,R) int32 and weights
    `bilinear` (4,R) with which grid_sample reads them (`BilinearCorners.read`), in those
    classes' planes only, `_READ_VALUES` at a time."""
    _, C, h, w = maps.shape
    out = maps.new_empty(classes.shape)
    step = max(1, _READ_VALUES // max(1, classes.shape[1]))  # points a pass: bounded (4,R',A) temporaries
    for start in range(0, len(k), step):
        part = slice(start, start + step)
        planes = (k[part, None] * C + classes[part]) * (h * w)  # (R',A) where each class's plane starts
        values = torch.take(maps, flat[:, part, None] + planes)  # (4,R',A)
        torch.sum(values.mul_(bilinear[:, part, None]), 0, out=out[part])
    return out


def _uniform(top: Tensor) -> Tensor:
    """(...,h,w) per-pixel classes -> (...,h*w) int32: for each pixel the class of its 2 x 2
    block (itself, right, below, below right, clamped at the last row and column) when all four
    share it, else -1. An entry whose bilinear read starts at that pixel reads only that class's
    top pixels. On the last column the block is the pixel and the one below it, on the last row
    the pixel and its right one: the below-right comparison is only needed inside."""
    differs = torch.zeros(top.shape, dtype=torch.bool, device=top.device)  # (...,h,w)
    torch.ne(top[..., :-1], top[..., 1:], out=differs[..., :-1])  # right
    differs[..., :-1, :] |= top[..., :-1, :] != top[..., 1:, :]  # below
    differs[..., :-1, :-1] |= top[..., :-1, :-1] != top[..., 1:, 1:]  # below right
    return top.masked_fill(differs, -1).flatten(-2)


def _all_four(flags: Tensor) -> Tensor:
    """(...,h,w) bool per pixel -> (...,h*w) bool: all four pixels of its 2 x 2 block (as `_uniform`)."""
    right = torch.cat((flags[..., 1:], flags[..., -1:]), -1)
    both = flags & right
    return (both & torch.cat((both[..., 1:, :], both[..., -1:, :]), -2)).flatten(-2)


@dataclass
class _SemanticRun:
    """The semantic summary of b consecutive patches of a teacher batch from `_summarise` to
    `_settle` (in `add_semantic`, or in `finish` when all their maps are kept); their entries
    are consecutive too (mapping order).

    Fields:
        first: the first patch; sl: the entries of the b patches.
        bounds: b + 1 ints, the entries of the k-th patch are [bounds[k], bounds[k+1]) from sl.start.
        grid: (M_r,2) the entries' grid_sample points.
        top: (b,S') int32 each map pixel's top class (`_top_class`).
        weight: (M_r,) float32 the entries' weights (border weight x teacher confidence, 0 where
            an entry reads a non-finite value).
        ok: (M_r,) bool entries that read only finite values, or None when all do.
        keep: per map, whether it is kept for `finish`.
        rest: (R,) int64 entries (from sl.start, ascending) not settled yet.
        listed: (L,) int64 entries (from sl.start) of maps too large to keep: each gets its
            exact top-k list at once.
        loud: (b,A') int64, count: (b,), quiet_bound: (b,) float32, each map's loud classes and
            the largest value of its quiet ones (`_top_class`).
    """

    first: int
    sl: slice
    bounds: list[int]
    grid: Tensor
    top: Tensor
    weight: Tensor
    ok: Tensor | None
    keep: list[bool]
    rest: Tensor
    listed: Tensor
    loud: Tensor
    count: Tensor
    quiet_bound: Tensor


class PanoramaFusion:
    """Accumulates one panorama's teacher outputs and fuses them (see the module doc)."""

    def __init__(
        self,
        geometry: FusionGeometry,
        config: FusionConfig,
        depth_kind: DepthKind | None,
        num_classes: int | None,
        normals: bool,
    ) -> None:
        self.geometry = geometry
        self.config = config
        self.depth_kind = depth_kind
        self.has_semantic = num_classes is not None
        self.has_normals = normals
        g = geometry
        M = g.num_entries  # mapping order; every entry is written once every patch has been given
        self.seen = torch.zeros(g.num_patches, 3, dtype=torch.bool)
        self.nonfinite = {"depth": 0, "semantic": 0, "normals": 0}
        # Seconds spent per task, reading patches and fusing (wall time on the host).
        present = {"depth": depth_kind is not None, "semantic": num_classes is not None, "normals": normals}
        self.seconds = {task: 0.0 for task, there in present.items() if there}
        # The per-entry state comes from the geometry's spare arrays and goes back to them
        # when the panorama is finished (`FusionGeometry.take`).
        if depth_kind is not None:
            self.depth_value = g.take((M,))  # teacher depth
            self.depth_teacher_conf: Tensor | None = None  # 1 until a teacher gives one
            self.alignment: Alignment | None = None
        if normals:
            self.normal_value = g.take((3, M))  # world frame
            self.normal_teacher_conf: Tensor | None = None
        if num_classes is not None:
            self.num_classes = num_classes
            k = config.semantic_top_k
            self.top_k = k if 0 < k < num_classes else num_classes  # classes summed per entry
            # Per entry (see `add_semantic`), rows of one (3,M) array: the entry's argmax (-1 = no
            # label), its probability, and a bound on the probability of any class the entry does
            # not know (its argmax and its second class, if it has one), both times its weight.
            self.sem = g.take((3, M))
            # The entries' weights: the border weights until a teacher's confidence or a hole changes them.
            self.sem_weight: Tensor | None = None
            self._seconds: list[tuple[Tensor, Tensor, Tensor]] = []  # (entries, classes, weighted probabilities)
            self._lists: list[tuple[Tensor, Tensor, Tensor]] = []  # exact top-k: (entries, classes, probabilities)
            # Kept probability maps by patch: its run's (b,C,h',w') maps, its row in them, and of
            # the run's maps the loud classes (b,A') (first of each row, `count` (b,) of them)
            # and the largest quiet value (b,).
            self._maps: dict[int, tuple[Tensor, int, Tensor, Tensor, Tensor]] = {}
            # Runs (maps, summary) whose maps are all kept, summarised but not settled yet:
            # `finish` settles them together, in fewer (larger) passes.
            self._pending: list[tuple[Tensor, _SemanticRun]] = []

    # ------------------------------------------------------------------ inputs
    @contextlib.contextmanager
    def _timed(self, task: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[task] += time.perf_counter() - began

    def _read(self, values: Tensor, patch: int) -> Iterator[tuple[slice, Tensor]]:
        """One patch's (C,h',w') map read (bilinear) at its entries: (entry slice, (C,L) values)
        pieces, in order."""
        sl = self.geometry.entries_of(patch)
        for points, out in read_points(values.float(), self.geometry.grid[sl]):
            yield slice(sl.start + points.start, sl.start + points.stop), out

    def _confidence(self, name: str) -> Tensor:
        """The teacher-confidence array `name` of a task, made (all 1) on first use."""
        if getattr(self, name) is None:
            setattr(self, name, torch.ones(self.geometry.num_entries, device=self.geometry.device))
        return getattr(self, name)

    def _add_confidence(self, name: str, confidence: Tensor, patch: int) -> None:
        """A patch's (h',w') teacher confidence read at its entries into the array `name`,
        clamped into [0,1] on the way."""
        conf = self._confidence(name)
        for entries, out in self._read(confidence[None], patch):
            torch.clamp(out[0], 0.0, 1.0, out=conf[entries])

    def _clean(self, values: Tensor, task: str) -> Tensor:
        """One patch's map with non-finite teacher outputs counted and turned into NaN
        (masked downstream). Per patch, so the check never allocates a batch-sized mask."""
        if bool(torch.isfinite(values.sum())):  # the usual case, in one reduction
            return values
        bad = ~torch.isfinite(values)
        n = int(bad.sum())
        if n:
            self.nonfinite[task] += n
            values = torch.where(bad, math.nan, values)
        return values

    def add_depth(self, patches: list[int], depth: Tensor, confidence: Tensor | None = None) -> None:
        """Teacher depth of some patches.

        Args:
            patches: patch indices (into the layout) of the batch.
            depth: (b,h',w') z-depth in metres (metric) or disparity (relative).
            confidence: (b,h',w') teacher confidence in [0,1], or None.
        """
        assert self.depth_kind is not None, "this fusion has no depth task"
        with self._timed("depth"):
            for k, n in enumerate(patches):
                for entries, out in self._read(self._clean(depth[k], "depth")[None], n):
                    self.depth_value[entries] = out[0]
                if confidence is not None:
                    self._add_confidence("depth_teacher_conf", confidence[k], n)
                self.seen[n, 0] = True

    def add_normals(self, patches: list[int], normals: Tensor, confidence: Tensor | None = None) -> None:
        """Teacher normals of some patches: (b,3,h',w') unit vectors in each camera frame."""
        assert self.has_normals, "this fusion has no normals task"
        with self._timed("normals"):
            for k, n in enumerate(patches):
                R = self.geometry.cameras.rotation[n].float()
                for entries, cam in self._read(self._clean(normals[k], "normals"), n):
                    world = torch.mm(R, cam, out=self.normal_value[:, entries])  # (3,3) @ (3,L) -> (3,L), in place
                    world.div_(world.square().sum(0).sqrt_())
                if confidence is not None:
                    self._add_confidence("normal_teacher_conf", confidence[k], n)
                self.seen[n, 2] = True

    def add_semantic(self, patches: list[int], probs: Tensor, confidence: Tensor | None = None) -> None:
        """Teacher class probabilities of some patches: (b,C,h',w'), summing to 1 over C.

        Fusion sums, per ERP pixel, the weighted probabilities of the top-k classes of every
        entry's distribution (bilinear in the patch's map), and takes the argmax. Reading all
        C classes at every entry is what that costs, so each entry is summarised instead: from
        a top class and a bound on every other class at every map pixel (two passes over the
        map, `_top_class`), an entry whose four map pixels share their top class `a` has
        probability p_a (interpolated) for it and at most u (the interpolated bound) for any
        other class. When p_a > u, `a` is the entry's argmax and in its top-k. Entries between
        map pixels of two top classes get both (read from the map), and when neither exceeds
        u, or three classes meet, the entry's exact top-k list is computed at once.
        `finish` then certifies each pixel's argmax from these figures, and sums the few pixels
        it cannot certify exactly, from the top-k lists of their entries (computed then from
        the maps, which are kept until the panorama is finished when any of a map's pixels has a
        bound that is not negligible; from their loud classes alone where those decide,
        `_summed_exactly`).
        """
        assert self.has_semantic, "this fusion has no semantic task"
        with self._timed("semantic"):
            maps = probs.float().contiguous()  # (b,C,h',w')
            start = 0
            for stop in range(1, len(patches) + 1):  # runs of consecutive patches, each at once
                if stop < len(patches) and patches[stop] == patches[stop - 1] + 1:
                    continue
                part = maps[start:stop]
                run = self._summarise(patches[start], part, None if confidence is None else confidence[start:stop])
                if all(run.keep):  # its maps stay until `finish`, which settles all such runs at once
                    self._pending.append((part, run))
                else:
                    self._two_classes([(part, run)])
                    self._settle(run, part)
                start = stop
            self.seen[patches, 1] = True

    def _summarise(self, first: int, probs: Tensor, confidence: Tensor | None) -> _SemanticRun:
        """Summarise the (b,C,h',w') probabilities of patches first..first+b-1 at their entries
        (see `add_semantic`); what is left for `_two_classes` and `_settle` is returned."""
        g = self.geometry
        b, C, h, w = probs.shape
        S = h * w
        starts = g.mapping.offsets
        sl = slice(starts[first], starts[first + b])
        bounds = [starts[first + k] - sl.start for k in range(b + 1)]
        sizes = [stop - begin for begin, stop in itertools.pairwise(bounds)]
        grid = g.grid[sl]
        tops = _top_class(probs.view(b, C, S), g.scratch((C, S), torch.int32))
        value, top, bound, finite, loud, count, quiet_bound = tops  # (b,S') each, then per map
        cell = g.map_cell(h, w)[sl]  # (M_r,) where each entry's bilinear read starts, in all the patches' maps
        out = self.sem[:, sl]  # (3,M_r) the run's entries, written in place
        # The shared top class of each entry's four map pixels (-1 = none), straight into its
        # row as float32 (exact for class ids); read at the panorama-wide cells from a table
        # whose first patches' part is never read.
        shared_tops = torch.empty((first + b) * S, device=g.device)
        shared_tops[first * S :] = _uniform(top.view(b, h, w)).view(-1)  # (b,S') -> (b*S',)
        shared = torch.index_select(shared_tops, 0, cell, out=out[_CLASS])  # (M_r,)
        weight = g.entry_weights[sl]
        if confidence is not None:
            conf = [sample_points(confidence[k][None].float(), part)[0] for k, part in enumerate(grid.split(sizes))]
            weight = weight * torch.cat(conf).clamp_(0.0, 1.0)
        ok = None  # every entry reads finite values
        if not bool(finite.all()):  # an entry reads NaN when any of its four map pixels holds one
            self.nonfinite["semantic"] += int((~torch.isfinite(probs)).sum())
            ok = _all_four(finite.view(b, h, w)).view(-1).index_select(0, cell - first * S)
            weight = torch.where(ok, weight, 0.0)
        if confidence is not None or ok is not None:
            if self.sem_weight is None:
                self.sem_weight = g.entry_weights.clone()
            self.sem_weight[sl] = weight
            weight = self.sem_weight[sl]  # a run kept until `finish` holds no copy
        # The top class's probability and the bound, interpolated as every class is, straight
        # into their rows.
        pair = torch.stack((value, bound), 1).view(b, 2, h, w)  # (b,2,S') -> (b,2,h',w')
        for k, part in enumerate(grid.split(sizes)):
            for points, read in read_points(pair[k], part):
                out[_PROB:, bounds[k] + points.start : bounds[k] + points.stop] = read
        p_top, u = out[_PROB], out[_BOUND]
        # An entry that reads only finite values has finite figures; the others (NaN) are not
        # settled here or listed: they weigh nothing.
        unsettled = (shared < 0) | (p_top <= u)
        if ok is not None:
            unsettled &= ok
        # A map is needed later if an entry may add something unknown to a class: if any of its
        # pixels has a bound that is not negligible (an entry's bound lies within its pixels';
        # a non-finite pixel's entries weigh nothing). A map too large to keep is fused exactly
        # at once instead.
        needed = [False] * b
        if self.top_k > 1:
            largest = (bound if ok is None else torch.where(finite, bound, 0.0)).amax(1)  # (b,)
            needed = (largest > _NEGLIGIBLE).tolist()
        exactly = probs[0].numel() * probs.element_size() > _KEEP_MAP_BYTES
        listed = torch.zeros(0, dtype=torch.int64, device=g.device)
        if exactly and any(needed):
            whole = torch.zeros_like(unsettled)
            for k in range(b):
                whole[bounds[k] : bounds[k + 1]] = needed[k]
            if ok is not None:
                whole &= ok
            listed = torch.nonzero(whole).squeeze(1)
            unsettled &= ~whole
        rest = _positions(unsettled)
        keep = [n and not exactly for n in needed]
        return _SemanticRun(first, sl, bounds, grid, top, weight, ok, keep, rest, listed, loud, count, quiet_bound)

    def _settle(self, run: _SemanticRun, probs: Tensor) -> None:
        """The rest of a run's summary, once `_two_classes` has had its entries: exact top-k
        lists for the entries still unsettled, and the weights (probs: the run's (b,C,h',w') maps)."""
        out = self.sem[:, run.sl]  # (3,M_r)
        todo = run.rest if not run.listed.numel() else torch.cat((run.rest, run.listed)).sort().values
        if todo.numel():
            ends = torch.tensor(run.bounds[1:], device=todo.device)
            cuts = [0, *torch.searchsorted(todo, ends).tolist()]  # the entries of map k: todo[cuts[k]:cuts[k+1]]
            for k in range(len(run.keep)):
                mine = todo[cuts[k] : cuts[k + 1]]
                if mine.numel():
                    self._list_exactly(out, mine, run.sl.start, probs[k], run.grid[mine], run.weight[mine])
        for k, keep in enumerate(run.keep):
            if keep:
                self._maps[run.first + k] = (probs, k, run.loud, run.count, run.quiet_bound)
        if self.top_k == 1:  # only the argmax is summed: nothing else adds anything
            out[_BOUND] = 0.0
        if run.ok is not None:
            out[_CLASS].masked_fill_(~run.ok, -1.0)
            out[_PROB:].masked_fill_(~run.ok, 0.0)
        out[_PROB:] *= run.weight  # the contributions to the pixels' sums

    def _two_classes(self, runs: list[tuple[Tensor, _SemanticRun]]) -> None:
        """The entries left (`rest`) of some runs whose four map pixels have two top classes:
        both classes' probabilities are read from the map. Where the larger one exceeds the
        bound (no other class reaches it) it is the argmax, and the smaller one is known too
        when it also exceeds the bound (kept with the seconds). Writes the argmax into `sem`
        and leaves in each run's `rest` only the entries it could not settle. The runs' entries
        go through one set of passes: they are few (about 1% of all), so each pass costs
        mostly its call.

        Args:
            runs: per run its (b,C,h',w') maps, contiguous, and its summary; maps of one size.
        """
        runs = [(maps, run) for maps, run in runs if run.rest.numel()]
        if not runs:
            return
        h, w = runs[0][0].shape[-2:]
        assert all(maps.shape[-2:] == (h, w) for maps, _ in runs), "maps of one size"
        g = self.geometry
        entries = torch.cat([run.sl.start + run.rest for _, run in runs])  # (R,) entries of the panorama
        spans = list(itertools.pairwise([0, *itertools.accumulate(len(run.rest) for _, run in runs)]))  # [lo, hi) a run
        flat, bilinear = BilinearCorners.of_grid(g.grid.index_select(0, entries), h, w).read()  # (4,R) each
        patch = g.entry_patch.index_select(0, entries)  # (R,)
        k = [(patch[lo:hi] - run.first).long() for (_, run), (lo, hi) in zip(runs, spans, strict=True)]  # map rows
        cls = torch.cat(
            [
                run.top.view(-1).index_select(0, (flat[:, lo:hi] + k_r * (h * w)).view(-1)).view(4, -1)  # (4,R_r)
                for (_, run), k_r, (lo, hi) in zip(runs, k, spans, strict=True)
            ],
            1,
        )  # (4,R) the corners' top classes
        a = cls[0]
        differs = cls != a
        # The first other class, and whether a third one is there.
        other = torch.where(differs[1], cls[1], torch.where(differs[2], cls[2], cls[3]))
        two = ~(differs & (cls != other)).any(0)
        both = torch.stack((a, other), 1).long()  # (R,2)
        read = [
            _read_classes(maps, k_r, both[lo:hi], flat[:, lo:hi], bilinear[:, lo:hi])  # (R_r,2)
            for (maps, _), k_r, (lo, hi) in zip(runs, k, spans, strict=True)
        ]
        p_a, p_b = torch.cat(read).unbind(1)  # (R,2) -> (R,) each
        u = self.sem[_BOUND].index_select(0, entries)
        a_first = p_a > p_b
        p_first, p_second = torch.maximum(p_a, p_b), torch.minimum(p_a, p_b)
        settled = two & (p_a != p_b) & (p_first > u)
        self.sem[_CLASS].index_copy_(0, entries, torch.where(a_first, a, other).float())
        self.sem[_PROB].index_copy_(0, entries, p_first)
        second = torch.nonzero(settled & (p_second > u)).squeeze(1)
        if self.top_k > 1 and second.numel():
            weight = torch.cat([run.weight.index_select(0, run.rest) for _, run in runs]).index_select(0, second)
            seconds = torch.where(a_first, other, a)[second].long()
            self._seconds.append((entries[second], seconds, p_second[second] * weight))
        for (_, run), (lo, hi) in zip(runs, spans, strict=True):
            run.rest = run.rest[~settled[lo:hi]]

    def _list_exactly(
        self, out: Tensor, rest: Tensor, offset: int, probs: Tensor, grid: Tensor, weight: Tensor
    ) -> None:
        """The exact top-k lists of entries `rest` (R,) of a patch (its first entry at `offset`)
        with map `probs` (C,h',w'), at `grid` (R,2), of weights `weight` (R,): written into `out`
        (3,M_n), kept for `finish`."""
        classes, values = self._top_list(probs, grid)  # (k,R) each
        out[_CLASS, rest], out[_PROB, rest] = classes[0].float(), values[0]
        # Known besides the argmax: the second class (kept with the seconds) when it is summed.
        out[_BOUND, rest] = values[2] if self.top_k > 2 else 0.0
        entries = offset + rest
        if self.top_k > 1:
            self._seconds.append((entries, classes[1], values[1] * weight))
        self._lists.append((entries, classes, values))

    def _top_list(self, probs: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
        """The exact top-k of the distributions that a (C,h',w') map gives at (R,2) points:
        classes (k,R) int64 and probabilities (k,R), largest first."""
        return self._largest(sample_points(probs, grid))  # (C,R) probabilities

    def _largest(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """The top-k of (C,R) distributions: classes (k,R) int64 and probabilities (k,R),
        largest first."""
        if self.top_k < probs.shape[0]:
            values, classes = probs.topk(self.top_k, dim=0)
        else:
            values, classes = probs.sort(dim=0, descending=True)
        return classes, values

    # ------------------------------------------------------------------ depth
    def align_depth(self) -> Alignment:
        """Solve the per-patch depth alignment (once; `finish` calls it when needed)."""
        assert self.depth_kind is not None, "this fusion has no depth task"
        if self.alignment is not None:
            return self.alignment
        g, cfg = self.geometry, self.config
        if self.depth_kind == METRIC_ZDEPTH:
            if cfg.align_metric_depth:
                # Only the entries of the pairs take part: read them, then solve on (K',) arrays.
                pairs = g.align
                v = pairs.at(self.depth_value)  # (2,K')
                valid = torch.isfinite(v) & (v > 0)
                log_range = torch.log(torch.where(valid, v * pairs.ray_norm, 1.0))  # (2,K')
                diff, weight, patch = _usable_pairs(
                    valid[0] & valid[1], log_range[0] - log_range[1], pairs.weight, pairs.patch
                )
                self.alignment = align_log_scales(
                    diff.double(), weight, patch[0], patch[1], g.num_patches, cfg.align_iterations
                )
            else:
                ones = torch.ones(g.num_patches, dtype=torch.float64, device=g.device)
                self.alignment = Alignment(ones, torch.zeros_like(ones), math.nan, math.nan, 0)
        else:
            assert self.depth_kind == RELATIVE_DISPARITY, self.depth_kind
            pairs = g.align
            d = pairs.at(self.depth_value).double()  # (2,K')
            inv_n = pairs.ray_norm.double().reciprocal_()  # (2,K')
            usable = torch.isfinite(d).all(0)
            dn, inv_n, weight, patch = _usable_pairs(usable, d.mul_(inv_n), inv_n, pairs.weight, pairs.patch)
            self.alignment = align_affine_disparity(
                dn, inv_n, weight, patch[0], patch[1], self._gauge_sums(), g.num_patches, cfg.align_iterations
            )
        return self.alignment

    def _gauge_sums(self) -> Tensor:
        """(3,P) float64 per patch over its entries with a finite teacher disparity d: their
        count, the sum of d/||c|| and the sum of 1/||c|| (the relative alignment's gauge). In the
        mapping's order, where each patch's entries are one slice."""
        g = self.geometry
        inv_n = g.entry_ray_norm.reciprocal()
        dn = self.depth_value * inv_n
        slices = [g.entries_of(p) for p in range(g.num_patches)]
        # A sum is finite only if every term is: one reduction tells the usual case.
        if bool(torch.isfinite(self.depth_value.sum())):
            counts = [torch.tensor(sl.stop - sl.start, dtype=torch.float64, device=g.device) for sl in slices]
        else:
            valid = torch.isfinite(self.depth_value)  # (M,)
            dn.masked_fill_(~valid, 0.0)
            inv_n.masked_fill_(~valid, 0.0)
            counts = [valid[sl].sum().double() for sl in slices]
        sums = [  # float32 terms summed in float64
            torch.stack((count, dn[sl].sum(dtype=torch.float64), inv_n[sl].sum(dtype=torch.float64)))
            for count, sl in zip(counts, slices, strict=True)
        ]
        return torch.stack(sums, 1)  # (3,P)

    def aligned_patch_zdepth(self, patches: list[int], depth: Tensor) -> Tensor:
        """Teacher depth maps of `patches` (b,h',w') as aligned planar z-depth (metric up to
        the store's gauge): what a geometric normals teacher differentiates."""
        with self._timed("depth"):
            a = self.align_depth()
        idx = torch.as_tensor(patches, device=depth.device)
        scale = a.scale.to(depth.device, torch.float32)[idx][:, None, None]  # (b,1,1)
        if self.depth_kind == METRIC_ZDEPTH:
            return depth * scale
        shift = a.shift.to(depth.device, torch.float32)[idx][:, None, None]  # (b,1,1)
        inverse = depth * scale + shift  # aligned 1/z
        return torch.where(inverse > 0, 1.0 / inverse, math.nan)

    def _weights(self, valid: Tensor | None, confidence: Tensor | None) -> PixelWeights:
        """The weights of a task whose valid slots are `valid` (M,) (None = all) and whose
        teacher confidence is `confidence` (mapping order; None = 1)."""
        g = self.geometry
        if valid is None and confidence is None:
            return g.full
        layout = g.layout
        if valid is None:
            base, base_sum, count, multi = g.weights, g.weight_sum, g.count, g.full.multi
        else:
            base = torch.where(valid, g.weights, 0.0)
            base_sum, count, multi = layout.reduce(base), layout.reduce(valid), None
        if confidence is None:
            return PixelWeights.of(base, base_sum, base_sum, count, multi)
        slots = g.to_slots(confidence).mul_(base)
        return PixelWeights.of(slots, layout.reduce(slots), base_sum, count, multi)

    def _fused_depth(self, labels: FusedLabels) -> None:
        g, cfg = self.geometry, self.config
        a = self.align_depth()
        metric = self.depth_kind == METRIC_ZDEPTH
        # Aligned range (metric) or aligned inverse range (relative), a patch at a time and in
        # place: in mapping order a patch's entries are one slice, so no per-entry scale is
        # gathered.
        raw, ray_norm = self.depth_value, g.entry_ray_norm
        scales, shifts = a.scale.float().tolist(), a.shift.float().tolist()
        for n in range(g.num_patches):
            sl = g.entries_of(n)
            if metric:
                raw[sl].mul_(ray_norm[sl]).mul_(scales[n])
            else:
                raw[sl].mul_(scales[n]).add_(shifts[n]).div_(ray_norm[sl])
        # In place where the operands are this function's own: at 1024x2048 an (M,) array is
        # 30 MB, and a fresh one costs its page faults.
        M = g.num_entries
        value = g.to_slots(raw, out=g.take((M,)))
        # Every value finite and positive is the usual case, told by one reduction (a NaN
        # fails both tests); elementwise tests cost ten times as much.
        low, high = torch.aminmax(value)
        valid = None if bool((low > 0) & (high < math.inf)) else (value > 0) & (value < math.inf)
        w = self._weights(valid, self.depth_teacher_conf)
        if valid is not None:
            value.masked_fill_(~valid, 1.0)  # log 1 = 0, and w = 0 there
        log_v = torch.log(value, out=g.take((M,)))
        w_log = torch.mul(w.slots, log_v, out=g.take((M,)))
        reduce = g.layout.reduce
        vsum = reduce(value.mul_(w.slots), overwrite=True)  # (H*W,), as the other sums
        l2sum = reduce(log_v.mul_(w_log), overwrite=True)
        lsum = reduce(w_log, overwrite=True)
        fused = vsum.div_(w.total)  # 0 / 0: NaN, no label, where nothing weighs
        total = w.total.clamp_min(1e-12)
        mean_l = lsum.div_(total)
        spread = l2sum.div_(total).sub_(mean_l.square()).clamp_min_(0.0).sqrt_()  # std of log depth
        agreement = torch.where(w.multi, spread.div(-cfg.depth_spread_scale).exp_(), cfg.single_view_agreement)
        conf = agreement.mul_(w.teacher)  # 0 where nothing weighs, as `teacher`
        labels.depth, labels.depth_confidence = self._image(fused), self._image(conf)
        labels.stats.update(
            {
                "depth_align_residual": a.residual,
                "depth_align_residual_before": a.residual_before,
                "depth_scale_spread": float(torch.log(a.scale.clamp_min(1e-12)).std()) if a.pairs else math.nan,
                "depth_disagreement": _masked_mean(spread, w.multi),
            }
        )
        labels.stats["depth_scales"] = a.scale.tolist()
        labels.stats["depth_shifts"] = a.shift.tolist()
        self._coverage_stats(labels.stats, "depth", w.has, conf)
        g.give(value, log_v, w_log)  # the sums above may be views of them

    # ------------------------------------------------------------------ normals
    def _fused_normals(self, labels: FusedLabels) -> None:
        g, cfg = self.geometry, self.config
        n = g.to_slots(self.normal_value, out=g.take(self.normal_value.shape))  # (3,M), changed in place
        # A normal is finite or all NaN (a hole, or a zero vector normalised): one sum tells
        # whether any is NaN.
        valid = ~torch.isnan(n[0]) if bool(torch.isnan(n[0].sum())) else None
        w = self._weights(valid, self.normal_teacher_conf)
        if valid is not None:
            n.masked_fill_(~valid, 0.0)
        vec = g.layout.reduce(n.mul_(w.slots), overwrite=True)  # (3,M) -> (3,H*W)
        length = vec.square().sum(0).sqrt()
        has = w.has & (length > 1e-12)
        fused = vec.div_(torch.where(has, length, math.nan))
        resultant = (length / w.total.clamp_min(1e-12)).clamp(0.0, 1.0)
        spread_deg = torch.rad2deg(torch.acos(resultant))
        agreement = torch.where(w.multi, spread_deg.div(-cfg.normal_spread_deg).exp_(), cfg.single_view_agreement)
        conf = torch.where(has, agreement.mul_(w.teacher), 0.0)
        labels.normals, labels.normals_confidence = self._image(fused), self._image(conf)
        labels.stats["normals_disagreement_deg"] = _masked_mean(spread_deg, has & w.multi)
        self._coverage_stats(labels.stats, "normals", has, conf)
        g.give(n)  # `vec` may be a view of it

    # ------------------------------------------------------------------ semantic
    def _fused_semantic(self, labels: FusedLabels) -> None:
        """Per pixel, the class c with the largest summed weighted probability F_c.

        The candidate is the class with (about: `_candidates`) the largest weighted argmax
        probability of any entry that sees the pixel. F of the candidate is exact when every such entry knows its
        contribution to it (or adds nothing to classes it does not know); every other class
        gets at most R, the sum over the entries of their largest known contribution to another
        class or their bound. Where F > R the candidate wins; the other pixels are summed
        exactly from the entries' top-k lists.
        """
        g, cfg = self.geometry, self.config
        layout = g.layout
        sem = g.to_slots(self.sem, out=g.take(self.sem.shape))
        classes = sem[_CLASS]
        # Without teacher confidences or holes, every entry weighs its border weight (> 0) and
        # has a label: the per-pixel weights and counts are the layout's own.
        everyone = self.sem_weight is None
        weight = g.weights if everyone else g.to_slots(self.sem_weight)
        total = g.weight_sum if everyone else layout.reduce(weight)  # (H*W,) the summed weights
        has = g.full.has if everyone else total > 0
        values, bound = sem[_PROB], sem[_BOUND]  # times the entries' weights
        candidate = _candidates(layout, values, classes, self.num_classes)  # (H*W,)
        # The entries whose class is not their pixel's candidate are few (where patches
        # disagree): what concerns them is done at their positions only, and the rows of
        # `sem` become in place the contributions to the candidate (values) and the rivals
        # (bounds), which differ from them only there.
        other = _positions(layout.differs(classes, candidate))  # (R,) positions, ascending
        other_pixels = layout.pixels_at(other)  # (R,)
        other_bound = bound.index_select(0, other)  # (R,)
        bound.index_copy_(0, other, torch.maximum(values.index_select(0, other), other_bound))
        values.index_fill_(0, other, 0.0)
        contribution, rival = values, bound
        known = torch.zeros(len(other), dtype=torch.bool, device=g.device)  # (R,) its second is the candidate
        if self._seconds:
            entries, second, second_value = (torch.cat(t) for t in zip(*self._seconds, strict=True))
            at = g.layout.position.index_select(0, entries)
            hit = second.float() == candidate.index_select(0, layout.pixels_at(at))  # the entry's pixel's candidate
            contribution.index_add_(0, at, torch.where(hit, second_value, 0.0))
            rivals = rival.index_select(0, at)
            rival.index_copy_(0, at, torch.where(hit, rivals, torch.maximum(rivals, second_value)))
            hit_at = at[hit]
            row = torch.searchsorted(other, hit_at)
            assert bool((other[row.clamp_max(len(other) - 1)] == hit_at).all()), "a hit entry knew the candidate"
            known[row] = True
        unknown = ~known & (other_bound > _NEGLIGIBLE)
        if not everyone:
            unknown &= weight[other] > 0
        fused = layout.reduce(contribution, overwrite=True)
        rival = layout.reduce(rival, overwrite=True)
        uncertain = fused <= rival
        uncertain[other_pixels[unknown]] = True
        label = torch.where(has, candidate, -1.0)  # float32 class ids until rasterised (a 4-byte gather)
        exact = _positions(has & uncertain)
        if exact.numel():
            best_class, fused[exact] = self._summed_exactly(exact, weight)
            label[exact] = best_class.float()
        self._seconds.clear()
        self._lists.clear()
        self._maps.clear()
        # 0 where nothing weighs (no contributions there), as `_coverage_stats` needs.
        fused_max = fused.div_(total.clamp_min(1e-12))
        conf = torch.where(g.full.multi, fused_max, fused_max * cfg.single_view_agreement).clamp_(0.0, 1.0)
        labels.semantic, labels.semantic_confidence = self._image(label).long(), self._image(conf)
        # Disagreement: share of overlap pixels where two patches' argmax classes differ, that is
        # where a labelled entry's class is not the candidate (which is one of them).
        differ = torch.zeros_like(has)
        if everyone:
            compared = g.full.multi
            differ[other_pixels] = True
        else:
            compared = layout.reduce(classes >= 0) >= 2
            differ[other_pixels[classes[other] >= 0]] = True
        differ &= compared
        n_compared, n_differ = torch.stack((torch.count_nonzero(compared), torch.count_nonzero(differ))).tolist()
        labels.stats["semantic_disagreement"] = n_differ / n_compared if n_compared else math.nan
        self._coverage_stats(labels.stats, "semantic", has, conf)
        g.give(sem)

    def _summed_exactly(self, pixels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Argmax class (L,) and its summed weighted probability (L,) of compact `pixels` (L,),
        from the exact top-k lists of every entry that sees them, with slot `weights` (M,).

        Where the loud classes of the kept maps decide a pixel (`_loud_decided`), its top's sum
        is completed from the full top-k lists of the entries that do not have it above their
        map's quiet bound (read from their kept maps' every class). The other pixels are summed
        from the full top-k lists of every entry (`_summed_lists`, from the figures of their
        entries found here), as all of them are where there is little to read
        (`_LOUD_READS_FROM`).
        """
        target, weight, entries = self._entries_of(pixels, weights)
        classes, summed, todo = self._known_lists(entries, weight)
        L, device = len(pixels), weight.device
        if not self._maps or len(todo) * self.num_classes < _LOUD_READS_FROM:  # the loud passes cost more
            return self._summed_lists(target, weight, entries, classes, summed, todo, L)
        best_class, best, rival, sure, lacking = self._loud_decided(target, weight, entries, classes, summed, todo, L)
        if lacking.numel():
            kept, list_classes, list_probs = self._kept_top_lists(entries[lacking])  # (k,F) each
            assert len(kept) == len(lacking), "an entry that read loud classes has its map kept"
            lacking = lacking[kept]
            at = target[lacking]  # (F,) their pixels
            top_prob = (list_probs * (list_classes == best_class[at])).sum(0)  # (k,F) -> (F,) 0 outside the list
            best.index_add_(0, at, top_prob * weight[lacking])
            sure &= best * _ROUNDING > rival  # unchanged unless a teacher gave negative values
        unsure = _positions(~sure)
        if unsure.numel():
            row = torch.full((L,), -1, dtype=torch.int64, device=device)
            row[unsure] = torch.arange(len(unsure), device=device)
            at = row[target]  # (R,) each entry's row among the unsure pixels, -1 elsewhere
            theirs = _positions(at >= 0)  # (R'',) the entries of the unsure pixels
            unlisted = torch.zeros(len(entries), dtype=torch.bool, device=device)  # without a whole list
            unlisted[todo] = True
            best_class[unsure], best[unsure] = self._summed_lists(
                at[theirs], weight[theirs], entries[theirs], classes[:, theirs], summed[:, theirs],
                _positions(unlisted[theirs]), len(unsure),
            )  # fmt: skip
        return best_class, best

    def _loud_decided(
        self, target: Tensor, weight: Tensor, entries: Tensor, classes: Tensor, summed: Tensor, todo: Tensor, L: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Which of L pixels the loud classes of the kept maps decide, from their entries (R,)
        as `_entries_of` and `_known_lists` give them (`todo` (T,): the entries without a whole
        top-k list).

        An entry whose patch's map was kept reads only the map's loud classes (`_loud_reads`):
        one above the map's quiet bound is in the entry's top-k list, and any other class adds
        at most its value or the quiet bound. Where the top of the sums known so far exceeds
        what any other class could reach, it is the argmax.
        Returns:
            best_class: (L,) int64 the top class of what is known.
            best: (L,) float32 its known sum (its values above the quiet bound and from whole lists).
            rival: (L,) float32 the most any other class could reach.
            sure: (L,) bool where the top is the argmax.
            lacking: (F,) int64 indices into `entries` of the sure pixels' entries that read loud
                classes but not the top above the quiet bound: their values complete its sum.
        """
        C, device = self.num_classes, weight.device
        sums = torch.zeros(C * L, device=device)  # (C*L,) per class and pixel, what is known
        found, pair_entry, pair_class, pair_value, quiet_bound, unread = self._loud_reads(entries[todo])
        mine = todo[found]  # (R',) the entries that read loud classes
        mine_pixels = target[mine]  # (R',) their pixels
        known_sums = summed.index_fill(1, mine, 0.0)  # (k,R) the loud classes tell their figures instead
        sums.index_add_(0, (classes * L + target).flatten(), known_sums.flatten())
        pixel = mine_pixels[pair_entry]  # (N,) the pixel of each (entry, loud class) pair
        contribution = pair_value * weight[mine][pair_entry]  # (N,)
        # Bilinear weights may sum to an ulp over 1: a margin of 2^-20 keeps the quiet bound one.
        margin = quiet_bound.mul_(1.0 + 2.0**-20)  # (R',)
        above = pair_value > margin[pair_entry]  # (N,) in the entry's top-k list
        quiet = margin * weight[mine]  # (R',) what a quiet class adds at most
        slot = pair_class * L + pixel  # (N,) into (C*L,)
        sums.index_add_(0, slot[above], contribution[above])
        # What any class could reach: its known sum, plus at every entry that reads loud
        # classes its value (or nothing, if that is less) where it is loud and not above, else
        # the quiet bound.
        reach = sums.view(C, L) + torch.zeros(L, device=device).index_add_(0, mine_pixels, quiet)  # (C,L)
        reach.view(-1).index_add_(0, slot, torch.where(above, 0.0, contribution.clamp_min(0.0)) - quiet[pair_entry])
        best, best_class = sums.view(C, L).max(0)  # (C*L,) -> (C,L)
        reach.view(-1)[best_class * L + torch.arange(L, device=device)] = -math.inf
        rival = reach.amax(0)  # (L,)
        sure = best * _ROUNDING > rival
        sure[target[todo[unread]]] = False
        # The top's sum lacks its values at the entries that do not have it above the quiet bound.
        tops = (pair_class == best_class[pixel]) & above  # (N,)
        has_top = torch.zeros(len(mine), dtype=torch.bool, device=device)
        has_top[pair_entry[tops]] = True
        lacking = mine[_positions(~has_top & sure[mine_pixels])]  # (F,)
        return best_class, best, rival, sure, lacking

    def _summed_lists(
        self, target: Tensor, weight: Tensor, entries: Tensor, classes: Tensor, summed: Tensor, todo: Tensor, L: int
    ) -> tuple[Tensor, Tensor]:
        """Argmax class (L,) and its summed weighted probability (L,) of L pixels from the full
        top-k lists of their entries (R,), once `_entries_of` and `_known_lists` have given
        their figures: the entries `todo` (T,) read their kept maps' every class."""
        if self._maps and todo.numel():
            kept, kept_classes, kept_probs = self._kept_top_lists(entries[todo])
            mine = todo[kept]
            classes[:, mine], summed[:, mine] = kept_classes, kept_probs * weight[mine]
        sums = torch.zeros(self.num_classes * L, device=weight.device)
        sums.index_add_(0, (classes * L + target).flatten(), summed.flatten())
        best, best_class = sums.view(self.num_classes, L).max(0)  # (C*L,) -> (C,L)
        return best_class, best

    def _entries_of(self, pixels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The entries of weight > 0 that see compact `pixels` (L,), with slot `weights` (M,):
        the index (0..L-1) of their pixel (R,), their weights (R,) and their entries (R,)
        (mapping order)."""
        g = self.geometry
        layout = g.layout
        at, target = [], []
        for s in range(layout.slots):
            inside = torch.nonzero(pixels < layout.starts[s + 1] - layout.starts[s]).squeeze(1)
            at.append(layout.starts[s] + pixels[inside])
            target.append(inside)
        at, target = torch.cat(at), torch.cat(target)
        weight = weights.index_select(0, at)
        live = weight > 0
        at, target, weight = at[live], target[live], weight[live]
        return target, weight, g.entry.index_select(0, at)

    def _known_lists(self, entries: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What is known of the top-k lists of `entries` (R,) of weights `weight` (R,) without
        reading the maps: classes (k,R) int64 and weighted probabilities (k,R), from the
        entries' argmax and second, or their whole top-k list; and the entries (T,) without a
        whole list, which may need their patch's kept map."""
        k, R, device = self.top_k, len(entries), weight.device
        classes = torch.zeros(k, R, dtype=torch.int64, device=device)
        summed = torch.zeros(k, R, device=device)
        classes[0] = self.sem[_CLASS].index_select(0, entries).long()
        summed[0] = self.sem[_PROB].index_select(0, entries)
        if self._seconds and k > 1:
            found, second, second_value = _look_up(self._seconds, entries)
            classes[1, found], summed[1, found] = second, second_value
        listed = torch.zeros(R, dtype=torch.bool, device=device)
        if self._lists:
            found, listed_classes, listed_probs = _look_up(self._lists, entries)
            classes[:, found], summed[:, found] = listed_classes, listed_probs * weight[found]
            listed[found] = True
        return classes, summed, _positions(~listed)

    def _loud_reads(self, entries: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The loud classes of the kept maps of `entries` (R,), read at them.

        Returns:
            found: (R',) int64 indices into `entries` of those whose maps are kept and read at
                most top-k classes (any of them above the map's quiet bound is then in an
                entry's top-k list).
            pair_entry, pair_class, pair_value: (N,) per (entry, loud class) pair the entry (an
                index into `found`), the class, and its probability at the entry.
            quiet_bound: (R',) float32 the largest value of a quiet class in each one's map.
            unread: (U,) int64 indices into `entries` of those whose kept maps read more classes.
        """
        g = self.geometry
        empty = torch.zeros(0, dtype=torch.int64, device=g.device)
        found, pair_entry, pair_class, pair_value, quiet_bound, unread = ([empty] for _ in range(6))
        pair_value[0], quiet_bound[0] = empty.float(), empty.float()
        read = 0
        for maps, mine, k, corners, (loud, count, largest_quiet) in self._kept_runs(entries):
            many = count[k] > self.top_k
            unread.append(mine[many])
            mine, k, corners = mine[~many], k[~many], tuple(t[:, ~many] for t in corners)
            classes = loud[k]  # (R_r,A')
            valid = torch.arange(loud.shape[1], device=g.device) < count[k][:, None]  # (R_r,A')
            values = _read_classes(maps, k, classes, *corners)  # (R_r,A')
            index = torch.arange(read, read + len(mine), device=g.device)[:, None].expand_as(classes)  # (R_r,A')
            found.append(mine)
            pair_entry.append(index[valid])
            pair_class.append(classes[valid])
            pair_value.append(values[valid])
            quiet_bound.append(largest_quiet[k])
            read += len(mine)
        return tuple(torch.cat(parts) for parts in (found, pair_entry, pair_class, pair_value, quiet_bound, unread))

    def _kept_top_lists(self, entries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The exact top-k lists of those of `entries` (R,) whose patches' maps are kept:
        their indices into `entries` (R',), classes (k,R') int64 and probabilities (k,R')."""
        found = [torch.zeros(0, dtype=torch.int64, device=self.geometry.device)]
        probs = [torch.zeros(self.num_classes, 0, device=self.geometry.device)]
        for maps, mine, k, corners, _ in self._kept_runs(entries):
            every = torch.arange(maps.shape[1], device=maps.device).expand(len(mine), -1)  # (R_r,C)
            found.append(mine)
            probs.append(_read_classes(maps, k, every, *corners).T)  # (R_r,C) -> (C,R_r)
        return (torch.cat(found), *self._largest(torch.cat(probs, 1)))

    def _kept_runs(self, entries: Tensor) -> list[tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor], tuple]]:
        """Those of `entries` (R,) whose patches' maps are kept, by run (teacher batch): the
        run's (b,C,h',w') maps, the entries' indices into `entries` (R_r,), their maps' rows in
        the run (R_r,), the four map pixels (4,R_r) int32 and weights (4,R_r) of their bilinear
        reads (`BilinearCorners.read`), and the run's loud classes, their counts and its
        largest quiet values (as `_maps` keeps them)."""
        g = self.geometry
        patch = g.entry_patch.index_select(0, entries).long()
        runs: dict[int, tuple[int, Tensor, tuple]] = {}
        first_of = [-1] * g.num_patches  # the first patch of each kept patch's run
        for n, (maps, k, *rest) in self._maps.items():
            first_of[n] = runs.setdefault(id(maps), (n - k, maps, tuple(rest)))[0]
        run_of = torch.tensor(first_of, device=g.device)[patch]  # (R,)
        corners: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}  # by map size, for all of `entries`
        found = []
        for first, maps, rest in runs.values():
            mine = _positions(run_of == first)
            if mine.numel():
                size = tuple(maps.shape[-2:])
                if size not in corners:
                    corners[size] = BilinearCorners.of_grid(g.grid.index_select(0, entries), *size).read()  # (4,R) each
                read = tuple(t[:, mine] for t in corners[size])  # (4,R_r) each
                found.append((maps, mine, patch[mine] - first, read, rest))
        return found

    # ------------------------------------------------------------------ output
    def _image(self, compact: Tensor) -> Tensor:
        """(H*W,) or (C,H*W) per-pixel values in compact order -> (H,W) or (C,H,W) image."""
        H = self.geometry.mapping.erp_height
        return self.geometry.layout.to_raster(compact).unflatten(-1, (H, 2 * H))  # (...,H*W) -> (...,H,W)

    def _coverage_stats(self, stats: dict, task: str, has: Tensor, conf: Tensor) -> None:
        """A task's coverage figures from its labelled pixels `has` (H*W,) and confidences
        `conf` (H*W,), which are 0 where there is no label."""
        g = self.geometry
        # count_nonzero: a bool sum converts the whole mask to int64 first.
        counts = (torch.count_nonzero(has), torch.count_nonzero(g.polar), torch.count_nonzero(has & g.polar))
        labelled, polar, in_polar, conf_sum = torch.stack(
            (*counts, conf.sum().double())
        ).tolist()  # one sync for the four sums
        stats[f"{task}_coverage"] = labelled / len(has)
        stats[f"{task}_coverage_polar"] = in_polar / polar if polar else math.nan
        stats[f"{task}_confidence_mean"] = conf_sum / labelled if labelled else 0.0
        stats[f"{task}_nonfinite"] = self.nonfinite[task]

    def finish(self) -> FusedLabels:
        """Align and fuse everything added. Every patch must have been given for every task.

        Stats (per task present): `<task>_coverage` (share of ERP pixels with a label),
        `<task>_coverage_polar` (the same for |latitude| > 60 degrees), `<task>_confidence_mean`,
        `<task>_nonfinite` (teacher output values that were NaN/inf, masked);
        depth: `depth_align_residual` (RMS of overlap residuals after alignment: log range, or
        aligned inverse range for relative teachers), `depth_align_residual_before`,
        `depth_scale_spread` (std of the log scales), `depth_disagreement` (mean std of log
        depth across patches over overlap pixels), `depth_scales`, `depth_shifts`;
        normals: `normals_disagreement_deg` (mean angular spread over overlaps); semantic:
        `semantic_disagreement` (share of compared overlap pixels whose patches' classes
        differ). The share of pixels per class is a figure of the stored labels
        (`pipeline.quality.fused_figures`).
        """
        labels = FusedLabels()
        tasks = [(0, self.depth_kind is not None), (1, self.has_semantic), (2, self.has_normals)]
        for column, present in tasks:
            if present and not bool(self.seen[:, column].all()):
                missing = torch.nonzero(~self.seen[:, column]).squeeze(1).tolist()
                raise AssertionError(
                    f"patches {missing} were not given for task {('depth', 'semantic', 'normals')[column]}"
                )
        if self.depth_kind is not None:
            with self._timed("depth"):
                self._fused_depth(labels)
        if self.has_normals:
            with self._timed("normals"):
                self._fused_normals(labels)
        if self.has_semantic:
            with self._timed("semantic"):
                for size in {maps.shape[-2:] for maps, _ in self._pending}:  # one teacher: one size
                    self._two_classes([(maps, run) for maps, run in self._pending if maps.shape[-2:] == size])
                for maps, run in self._pending:
                    self._settle(run, maps)
                self._pending.clear()
                self._fused_semantic(labels)
        # The state goes back to the geometry for the next panorama; a finished fusion holds none.
        for name in ("depth_value", "normal_value", "sem"):
            if hasattr(self, name):
                self.geometry.give(getattr(self, name))
                delattr(self, name)
        return labels


def _positions(mask: Tensor) -> Tensor:
    """(n,) int64 ascending positions of the True values of a (n,) bool `mask`, as
    `torch.nonzero(mask).squeeze(1)`.

    torch's CPU nonzero costs about 1.5 ns per mask byte however few are set, which dominates
    for the sparse masks the fusion turns into positions (entries at class boundaries: 10.8 ms
    for 7.2M entries with 0.2% set). Here the mask is read as 8-byte words first, and only the
    words that hold a True are looked into (2.7 ms there); a mask with more than a quarter of
    its words set goes to torch's nonzero (20% set at random: 34 ms this way, 19 ms torch's).
    """
    assert mask.dim() == 1 and mask.dtype == torch.bool, "a (n,) bool mask"
    n = mask.numel()
    body = n - n % _WORD
    whole_words = mask.is_contiguous() and mask.storage_offset() % _WORD == 0  # as int64 views need
    if mask.device.type != "cpu" or body < _WORD * _WORDS_MIN or not whole_words:
        return torch.nonzero(mask).squeeze(1)
    words = torch.nonzero(mask[:body].view(torch.int64)).squeeze(1)  # (k,) the words holding a True
    if len(words) > body // (4 * _WORD):
        return torch.nonzero(mask).squeeze(1)
    row, column = torch.nonzero(mask[:body].view(-1, _WORD).index_select(0, words), as_tuple=True)  # (k,8) bytes
    out = words[row].mul_(_WORD).add_(column)
    if body < n:
        out = torch.cat((out, torch.nonzero(mask[body:]).squeeze(1).add_(body)))
    return out


_WORD = 8  # bytes of an int64 word
_WORDS_MIN = 4096  # shorter masks take torch's nonzero at once


def _usable_pairs(usable: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """The alignment pairs' values (...,K') at the (K',) `usable` pairs only (as they are when
    every pair is usable)."""
    if bool(usable.all()):
        return values
    keep = torch.nonzero(usable).squeeze(1)
    return tuple(v[..., keep] for v in values)


def _look_up(kept: list[tuple[Tensor, ...]], at: Tensor) -> tuple[Tensor, ...]:
    """Per-entry records of entries `at` (R,): `kept` is a non-empty list of parts (entries
    (n,), then values (n,) or (k,n)). Returns the indices into `at` that have a record, then
    each kind of value at those (along the last dimension)."""
    positions = torch.cat([part[0] for part in kept])
    order = torch.argsort(positions)
    sorted_positions = positions[order]
    row = torch.searchsorted(sorted_positions, at).clamp_(max=len(positions) - 1)
    found = torch.nonzero(sorted_positions[row] == at).squeeze(1)
    row = order[row[found]]
    values = [torch.cat([part[i] for part in kept], -1)[..., row] for i in range(1, len(kept[0]))]
    return (found, *values)


def _masked_mean(values: Tensor, mask: Tensor, empty: float = math.nan) -> float:
    """Mean of `values` (n,) where `mask` (n,) bool, or `empty` when the mask is empty (one
    sync). The values must be finite everywhere: they are multiplied by the mask as 0 and 1
    (read as bytes: a bool-to-float conversion is several times slower, and so is a `where`)
    and summed as torch sums, the same in any process whatever its threads (a BLAS dot is not)."""
    ones = mask.view(torch.uint8).to(values.dtype)
    total, count = torch.stack((ones.mul_(values).sum(), torch.count_nonzero(mask).to(values.dtype))).tolist()
    return total / count if count else empty
