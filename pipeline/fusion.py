"""Re-projection and fusion of teacher patch outputs into ERP labels with confidence.

`FusionGeometry` holds what depends only on the layout (computed once per worker): the
patch -> ERP correspondences (`spherical.reproject.PatchToErp`, footprints only), per-entry
weights that fall off towards patch borders, the ray length ||c|| of every entry and the
pairs of entries that see the same ERP pixel (for alignment and agreement).

`PanoramaFusion` takes one panorama's teacher outputs as they arrive, in any order and in
batches of patches, and keeps bounded state: per-entry depth and normals (a few floats per
entry) and running sums of the semantic probabilities (C x H x W). `finish()` aligns the
depth of the patches jointly (`pipeline.align`), fuses every task by weighted averaging and
derives per-pixel confidences from the agreement of overlapping patches and, where given,
the teachers' own confidence. Everything runs in torch on the teacher's device.

Frames and units follow docs/conventions.md: depth goes from patch z-depth to ERP range
(range = z * ||c||), normals from each camera frame to the world frame (n_w = R n_c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.align import Alignment, align_affine_disparity, align_log_scales
from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, DepthKind
from spherical.camera import PatchCameras
from spherical.erp import erp_lonlat
from spherical.reproject import PatchToErp, patch_to_erp


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
    # Classes kept per patch pixel when summing semantic probabilities (0 = all): the mass
    # beyond the top few is negligible, and summing 150 classes per entry is the cost of fusion.
    semantic_top_k: int = 8

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


def _same_pixel_pairs(erp_index: Tensor, max_count: int) -> Tensor:
    """(K,2) int64 entry pairs (i < j after sorting) that map to the same ERP pixel."""
    order = torch.argsort(erp_index, stable=True)
    sorted_index = erp_index[order]
    pairs = []
    for gap in range(1, max_count):
        same = sorted_index[gap:] == sorted_index[:-gap]  # (M-gap,)
        first = torch.nonzero(same).squeeze(1)
        pairs.append(torch.stack((order[first], order[first + gap]), 1))
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.int64, device=erp_index.device)
    return torch.cat(pairs)


@dataclass(frozen=True)
class FusionGeometry:
    """Layout-dependent fusion state, shared by every panorama (see the module doc).

    Fields:
        cameras: the P patch cameras, on the fusion device.
        mapping: ERP pixel <-> patch correspondences at label resolution (M entries).
        weights: (M,) float32 border weights of the entries.
        ray_norm: (M,) float32 ||c|| of each entry's c_z = 1 camera ray.
        patch: (M,) int64 patch of each entry.
        pairs: (K,2) int64 entries that see the same ERP pixel from two patches.
        align_pairs: (K',2) an even subsample of `pairs`, at most `align_max_pairs`.
        count: (H*W,) int64 patches that see each ERP pixel.
        polar: (H*W,) bool pixels with |latitude| > 60 degrees.
    """

    cameras: PatchCameras
    mapping: PatchToErp
    weights: Tensor
    ray_norm: Tensor
    patch: Tensor
    pairs: Tensor
    align_pairs: Tensor
    count: Tensor
    polar: Tensor

    @classmethod
    def build(cls, cameras: PatchCameras, erp_height: int, config: FusionConfig) -> FusionGeometry:
        """Correspondences and weights for `cameras` at label height `erp_height`, on the
        cameras' device (float32 cameras give float32 sub-pixel coordinates)."""
        mapping = patch_to_erp(cameras, erp_height)
        patch = mapping.patch_index
        h, w = cameras.height, cameras.width
        weights = border_weights(mapping.x, mapping.y, w, h, config).float()
        focal = cameras.focal[patch]
        cx = (mapping.x - w / 2.0) / focal
        cy = (mapping.y - h / 2.0) / focal
        ray_norm = torch.sqrt(cx * cx + cy * cy + 1.0).float()
        count = mapping.counts().flatten()
        erp_index = mapping.erp_index.long()
        pairs = _same_pixel_pairs(erp_index, int(count.max()))
        _, lat = erp_lonlat(erp_height, device=cameras.device)
        polar = (lat.abs() > math.radians(60.0))[:, None].expand(-1, 2 * erp_height).flatten()
        align_pairs = pairs[:: max(1, math.ceil(len(pairs) / config.align_max_pairs))]
        return cls(cameras, mapping, weights, ray_norm, patch, pairs, align_pairs, count, polar)

    @property
    def num_patches(self) -> int:
        return len(self.cameras)

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def erp_index(self) -> Tensor:
        return self.mapping.erp_index.long()


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
        M, HW = len(g.mapping), g.count.numel()
        self.seen = torch.zeros(g.num_patches, 3, dtype=torch.bool)
        self.nonfinite = {"depth": 0, "semantic": 0, "normals": 0}
        if depth_kind is not None:
            self.depth_value = torch.full((M,), math.nan, device=g.device)  # teacher depth at the entries
            self.depth_teacher_conf = torch.ones(M, device=g.device)
            self.alignment: Alignment | None = None
        if normals:
            self.normal_value = torch.full((3, M), math.nan, device=g.device)  # world frame
            self.normal_teacher_conf = torch.ones(M, device=g.device)
        if num_classes is not None:
            self.num_classes = num_classes
            self.prob_sum = torch.zeros(num_classes, HW, device=g.device)
            self.prob_weight = torch.zeros(HW, device=g.device)
            self.sem_label = torch.full((M,), -1, dtype=torch.int64, device=g.device)  # per-entry argmax

    # ------------------------------------------------------------------ inputs
    def _sample(self, values: Tensor, patch: int) -> Tensor:
        """(C,h',w') patch map -> (C,M_n) values at the patch's entries (bilinear)."""
        return self.geometry.mapping.sample_patch(values.float(), patch)

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
        for k, n in enumerate(patches):
            sl = self.geometry.mapping.entries_of(n)
            self.depth_value[sl] = self._sample(self._clean(depth[k], "depth")[None], n)[0]
            if confidence is not None:
                self.depth_teacher_conf[sl] = self._sample(confidence[k][None], n)[0].clamp(0, 1)
            self.seen[n, 0] = True

    def add_normals(self, patches: list[int], normals: Tensor, confidence: Tensor | None = None) -> None:
        """Teacher normals of some patches: (b,3,h',w') unit vectors in each camera frame."""
        assert self.has_normals, "this fusion has no normals task"
        rotation = self.geometry.cameras.rotation
        for k, n in enumerate(patches):
            sl = self.geometry.mapping.entries_of(n)
            cam = self._sample(self._clean(normals[k], "normals"), n)  # (3,M_n)
            world = rotation[n].to(cam.dtype) @ cam  # (3,3) @ (3,M_n) -> (3,M_n)
            self.normal_value[:, sl] = world / torch.linalg.vector_norm(world, dim=0, keepdim=True)
            if confidence is not None:
                self.normal_teacher_conf[sl] = self._sample(confidence[k][None], n)[0].clamp(0, 1)
            self.seen[n, 2] = True

    def add_semantic(self, patches: list[int], probs: Tensor, confidence: Tensor | None = None) -> None:
        """Teacher class probabilities of some patches: (b,C,h',w'), summing to 1 over C."""
        assert self.has_semantic, "this fusion has no semantic task"
        g = self.geometry
        for k, n in enumerate(patches):
            sl = g.mapping.entries_of(n)
            p = self._sample(self._clean(probs[k], "semantic"), n)  # (C,M_n)
            ok = torch.isfinite(p).all(0)
            w = torch.where(ok, g.weights[sl], 0.0)
            if confidence is not None:
                w = w * self._sample(confidence[k][None], n)[0].clamp(0, 1)
            p = torch.where(ok, p, 0.0)
            index = g.mapping.erp_index[sl].long()
            k_top = self.config.semantic_top_k
            if 0 < k_top < self.num_classes:
                top, classes = p.topk(k_top, dim=0)  # (k,M_n) each, best class first
            else:
                top, classes = p.sort(dim=0, descending=True)  # (C,M_n) each
            # One flat index_add over (class, pixel) pairs of the summed (C,H*W) probabilities.
            flat = classes * g.count.numel() + index  # (k,M_n)
            self.prob_sum.view(-1).index_add_(0, flat.flatten(), (top * w).flatten())
            self.prob_weight.index_add_(0, index, w)
            self.sem_label[sl] = torch.where(ok, classes[0], -1)
            self.seen[n, 1] = True

    # ------------------------------------------------------------------ depth
    def align_depth(self) -> Alignment:
        """Solve the per-patch depth alignment (once; `finish` calls it when needed)."""
        assert self.depth_kind is not None, "this fusion has no depth task"
        if self.alignment is not None:
            return self.alignment
        g, cfg = self.geometry, self.config
        v = self.depth_value
        if self.depth_kind == METRIC_ZDEPTH:
            valid = torch.isfinite(v) & (v > 0)
            log_range = torch.log(torch.where(valid, v * g.ray_norm, 1.0))
            iterations = cfg.align_iterations if cfg.align_metric_depth else -1
            if cfg.align_metric_depth:
                self.alignment = align_log_scales(
                    log_range, valid, g.patch, g.align_pairs, g.weights, g.num_patches, iterations
                )
            else:
                ones = torch.ones(g.num_patches, dtype=torch.float64, device=g.device)
                self.alignment = Alignment(ones, torch.zeros_like(ones), math.nan, math.nan, 0)
        else:
            assert self.depth_kind == RELATIVE_DISPARITY, self.depth_kind
            valid = torch.isfinite(v)
            self.alignment = align_affine_disparity(
                torch.where(valid, v, 0.0), g.ray_norm, valid, g.patch, g.align_pairs, g.weights, g.num_patches,
                cfg.align_iterations,
            )  # fmt: skip
        return self.alignment

    def aligned_patch_zdepth(self, patches: list[int], depth: Tensor) -> Tensor:
        """Teacher depth maps of `patches` (b,h',w') as aligned planar z-depth (metric up to
        the store's gauge): what a geometric normals teacher differentiates."""
        a = self.align_depth()
        idx = torch.as_tensor(patches, device=depth.device)
        scale = a.scale.to(depth.device, torch.float32)[idx][:, None, None]  # (b,1,1)
        if self.depth_kind == METRIC_ZDEPTH:
            return depth * scale
        shift = a.shift.to(depth.device, torch.float32)[idx][:, None, None]  # (b,1,1)
        inverse = depth * scale + shift  # aligned 1/z
        return torch.where(inverse > 0, 1.0 / inverse, math.nan)

    def _fused_depth(self, labels: FusedLabels) -> None:
        g, cfg = self.geometry, self.config
        a = self.align_depth()
        v = self.depth_value
        scale = a.scale.float()[g.patch]
        if self.depth_kind == METRIC_ZDEPTH:
            value = v * g.ray_norm * scale  # aligned range
        else:
            value = (v * scale + a.shift.float()[g.patch]) / g.ray_norm  # aligned inverse range
        valid = torch.isfinite(value) & (value > 0)
        base = torch.where(valid, g.weights, 0.0)
        w = base * self.depth_teacher_conf
        value0 = torch.where(valid, value, 0.0)
        log_v = torch.log(torch.where(valid, value, 1.0))
        sums = self._scatter(torch.stack((w, w * value0, w * log_v, w * log_v * log_v, valid.float(), base)))
        wsum, vsum, lsum, l2sum, nvalid, base_sum = sums
        has = wsum > 0
        fused = torch.where(has, vsum / wsum.clamp_min(1e-12), math.nan)
        mean_l = lsum / wsum.clamp_min(1e-12)
        spread = torch.sqrt((l2sum / wsum.clamp_min(1e-12) - mean_l**2).clamp_min(0.0))  # std of log depth
        agreement = torch.where(nvalid >= 2, torch.exp(-spread / cfg.depth_spread_scale), cfg.single_view_agreement)
        teacher = wsum / base_sum.clamp_min(1e-12)  # base-weighted mean teacher confidence
        conf = torch.where(has, agreement * teacher, 0.0)
        labels.depth, labels.depth_confidence = self._image(fused), self._image(conf)
        overlap = nvalid >= 2
        labels.stats.update(
            {
                "depth_align_residual": a.residual,
                "depth_align_residual_before": a.residual_before,
                "depth_scale_spread": float(torch.log(a.scale.clamp_min(1e-12)).std()) if a.pairs else math.nan,
                "depth_disagreement": float(spread[overlap].mean()) if bool(overlap.any()) else math.nan,
            }
        )
        labels.stats["depth_scales"] = a.scale.tolist()
        labels.stats["depth_shifts"] = a.shift.tolist()
        self._coverage_stats(labels.stats, "depth", has, conf)

    # ------------------------------------------------------------------ normals
    def _fused_normals(self, labels: FusedLabels) -> None:
        g, cfg = self.geometry, self.config
        n = self.normal_value
        valid = torch.isfinite(n).all(0)
        base = torch.where(valid, g.weights, 0.0)
        w = base * self.normal_teacher_conf
        n0 = torch.where(valid, n, 0.0)
        sums = self._scatter(torch.cat((n0 * w, torch.stack((w, valid.float(), base)))))
        vec, wsum, nvalid, base_sum = sums[:3], sums[3], sums[4], sums[5]
        length = torch.linalg.vector_norm(vec, dim=0)
        has = (wsum > 0) & (length > 1e-12)
        fused = torch.where(has, vec / length.clamp_min(1e-12), math.nan)
        resultant = (length / wsum.clamp_min(1e-12)).clamp(0.0, 1.0)
        spread_deg = torch.rad2deg(torch.acos(resultant))
        agreement = torch.where(nvalid >= 2, torch.exp(-spread_deg / cfg.normal_spread_deg), cfg.single_view_agreement)
        conf = torch.where(has, agreement * wsum / base_sum.clamp_min(1e-12), 0.0)
        labels.normals, labels.normals_confidence = self._image(fused, 3), self._image(conf)
        overlap = has & (nvalid >= 2)
        labels.stats["normals_disagreement_deg"] = (
            float(spread_deg[overlap].mean()) if bool(overlap.any()) else math.nan
        )
        self._coverage_stats(labels.stats, "normals", has, conf)

    # ------------------------------------------------------------------ semantic
    def _fused_semantic(self, labels: FusedLabels) -> None:
        g, cfg = self.geometry, self.config
        has = self.prob_weight > 0
        label = torch.where(has, self.prob_sum.argmax(0), -1)
        fused_max = self.prob_sum.amax(0) / self.prob_weight.clamp_min(1e-12)
        single = g.count < 2
        conf = torch.where(has, fused_max * torch.where(single, cfg.single_view_agreement, 1.0), 0.0)
        labels.semantic, labels.semantic_confidence = self._image(label), self._image(conf.clamp(0, 1))
        # Disagreement: share of overlap pixels where two patches' argmax classes differ.
        i, j = g.pairs[:, 0], g.pairs[:, 1]
        li, lj = self.sem_label[i], self.sem_label[j]
        both = (li >= 0) & (lj >= 0)
        pixel = g.erp_index()[i]
        compared = torch.zeros_like(has).index_fill_(0, pixel[both], True)
        differ = torch.zeros_like(has).index_fill_(0, pixel[both & (li != lj)], True)
        n_compared = int(compared.sum())
        labels.stats["semantic_disagreement"] = int(differ.sum()) / n_compared if n_compared else math.nan
        hist = torch.bincount(label[has], minlength=self.num_classes).double()
        labels.stats["semantic_histogram"] = (hist / hist.sum().clamp_min(1)).tolist()
        self._coverage_stats(labels.stats, "semantic", has, conf)

    # ------------------------------------------------------------------ output
    def _scatter(self, entry_values: Tensor) -> Tensor:
        """Sum (C,M) or (M,) entry values per ERP pixel: (C,H*W) or (H*W,)."""
        index = self.geometry.erp_index()
        HW = self.geometry.count.numel()
        if entry_values.ndim == 1:
            return torch.zeros(HW, dtype=entry_values.dtype, device=entry_values.device).index_add_(
                0, index, entry_values
            )
        out = torch.zeros(entry_values.shape[0], HW, dtype=entry_values.dtype, device=entry_values.device)
        for c in range(entry_values.shape[0]):
            out[c].index_add_(0, index, entry_values[c])
        return out

    def _image(self, flat: Tensor, channels: int = 0) -> Tensor:
        H = self.geometry.mapping.erp_height
        shape = (channels, H, 2 * H) if channels else (H, 2 * H)
        return flat.reshape(shape)  # (C,H*W) -> (C,H,W) or (H*W,) -> (H,W)

    def _coverage_stats(self, stats: dict, task: str, has: Tensor, conf: Tensor) -> None:
        g = self.geometry
        stats[f"{task}_coverage"] = float(has.float().mean())
        stats[f"{task}_coverage_polar"] = float(has[g.polar].float().mean())
        stats[f"{task}_confidence_mean"] = float(conf[has].mean()) if bool(has.any()) else 0.0
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
        differ), `semantic_histogram` (share of pixels per class).
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
            self._fused_depth(labels)
        if self.has_normals:
            self._fused_normals(labels)
        if self.has_semantic:
            self._fused_semantic(labels)
        return labels
