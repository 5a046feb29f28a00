"""The fast fusion (pipeline/fusion.py) gives the labels of the straightforward maths
(tests/fusion_reference.py) within float tolerance, on a synthetic room seen by the 20
icosahedron patches: depth aligned per patch (metric and relative), normals, and class
probabilities of every kind a teacher gives (one-hot at full resolution, dense at a quarter of
it as Mask2Former's, and close calls everywhere), with holes, zero vectors, teacher
confidences and every top-k setting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fusion_reference import reference_fusion, same_pixel_pairs

from pipeline import fusion
from pipeline.align import _lower_median
from pipeline.fusion import FusionConfig, FusionGeometry, PanoramaFusion, _candidates, _positions, _top_class, _uniform
from spherical.layouts import icosahedron_layout
from spherical.reproject import BilinearCorners, patch_to_erp
from synthetic.render import render_patches
from synthetic.scene import generate_scene

PATCH = 64
ERP_HEIGHT = 48
CLASSES = 150


@pytest.fixture(scope="module")
def room():
    """Teacher outputs for the 20 patches of a synthetic room, with the errors teachers make."""
    cameras = icosahedron_layout().cameras(PATCH)
    gt = render_patches(generate_scene(3), cameras)
    P = len(cameras)
    g = torch.Generator().manual_seed(0)
    depth = gt.zdepth * (1.0 + 0.2 * (torch.rand(P, generator=g) - 0.5))[:, None, None]  # per-patch scale errors
    depth[2, :3, :3] = math.nan
    depth[5, -2:, -2:] = math.inf
    normals = gt.normals + 0.05 * torch.randn(gt.normals.shape, generator=g)
    normals = normals / torch.linalg.vector_norm(normals, dim=1, keepdim=True)
    normals[4, :, :2, :2] = math.nan
    normals[6, :, 5, 5] = 0.0  # a zero vector: no direction
    one_hot = F.one_hot(gt.semantic.long(), CLASSES).permute(0, 3, 1, 2).float()  # (P,h,w,C) -> (P,C,h,w)
    # A quarter of the patch size, dense: blurred across boundaries, every class some mass.
    dense = F.avg_pool2d(one_hot, 4) * 0.95 + 0.05 / CLASSES
    # Close calls everywhere: smooth random logits, several classes within a few percent.
    logits = F.interpolate(torch.randn(P, CLASSES, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    close = (2.0 * logits).softmax(1)
    close[3] = 1.0 / CLASSES  # a patch without any evidence: every class tied
    close[7, :, 2:4, 2:4] = math.nan
    # Half the patches certain (one-hot: nothing unknown, their maps not kept), half close calls.
    mixed = F.one_hot(dense.argmax(1), CLASSES).permute(0, 3, 1, 2).float()  # (P,h,w,C) -> (P,C,h,w)
    mixed[1::2] = close[1::2]
    # Patches that disagree: every other one gives 90% of the room's most common class to an
    # unused class and the rest to another, so that where the others see it, it wins (no ties)
    # and is quiet in these patches' maps.
    common = int(torch.bincount(gt.semantic.flatten().long()).argmax())
    disagreeing = dense.clone()
    mass = dense[1::2, common] - dense[1::2, -1]  # (P/2,h/4,w/4) above the floor every class has
    disagreeing[1::2, -1] += 0.9 * mass
    disagreeing[1::2, -2] += 0.1 * mass
    disagreeing[1::2, common] -= mass
    confidence = torch.rand(P, PATCH, PATCH, generator=g)
    return {
        "cameras": cameras,
        "depth": depth,
        "relative": 2.0 / gt.zdepth + 0.3,
        "normals": normals,
        "one_hot": one_hot,
        "dense": dense,
        "close": close,
        "mixed": mixed,
        "disagreeing": disagreeing,
        "confidence": confidence,
    }


def fuse(
    cameras, config: FusionConfig, batches: list[list[int]] | None = None, geometry: FusionGeometry | None = None,
    **outputs,
) -> tuple:  # fmt: skip
    """The fast fusion of `outputs` (keys as `reference_fusion`'s), patches added in `batches`,
    with `geometry` (a new one when None)."""
    geometry = geometry or FusionGeometry.build(cameras, ERP_HEIGHT, config)
    probs = outputs.get("probs")
    state = PanoramaFusion(
        geometry,
        config,
        outputs.get("depth_kind", "metric_zdepth") if outputs.get("depth") is not None else None,
        probs.shape[1] if probs is not None else None,
        outputs.get("normals") is not None,
    )
    batches = batches or [list(range(i, min(i + 8, len(cameras)))) for i in range(0, len(cameras), 8)]

    def part(name: str, ids: list[int]):
        value = outputs.get(name)
        return value[ids] if value is not None else None

    for ids in batches:
        if outputs.get("depth") is not None:
            state.add_depth(ids, part("depth", ids), part("depth_confidence", ids))
        if outputs.get("normals") is not None:
            state.add_normals(ids, part("normals", ids), part("normals_confidence", ids))
        if probs is not None:
            state.add_semantic(ids, part("probs", ids), part("probs_confidence", ids))
    counts = {"kept": 0, "listed": 0}  # maps kept and exact lists made, as the fusion of classes starts
    if probs is not None:
        fused_semantic = state._fused_semantic

        def counted(labels):
            counts.update(kept=len(state._maps), listed=len(state._lists))
            fused_semantic(labels)

        state._fused_semantic = counted
    return state.finish(), counts["kept"], counts["listed"]


def assert_stats_close(stats: dict, expected: dict) -> None:
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, list):
            torch.testing.assert_close(torch.tensor(stats[key]), torch.tensor(value), rtol=1e-5, atol=1e-7, msg=key)
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(stats[key]), key
        else:
            assert stats[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("holes", [True, False])
@pytest.mark.parametrize("kind", ["metric_zdepth", "relative_disparity"])
def test_depth_and_normals_match_the_reference(room, kind, holes):
    """With holes (NaN, inf, zero normals) and teacher confidences, and without either: the
    usual case, where the fusion takes the layout's own per-pixel weights and counts."""
    config = FusionConfig()
    depth = room["depth"] if kind == "metric_zdepth" else room["relative"]
    normals = room["normals"]
    confidence = room["confidence"]
    if not holes:
        depth = torch.where(torch.isfinite(depth), depth, 1.0)
        normals = torch.where(torch.isfinite(normals) & (normals.abs().sum(1, keepdim=True) > 0), normals, 1.0 / 3**0.5)
        confidence = None
    outputs = dict(depth=depth, depth_kind=kind, depth_confidence=confidence, normals=normals)
    labels, _, _ = fuse(room["cameras"], config, **outputs)
    expected = reference_fusion(room["cameras"], ERP_HEIGHT, config, **outputs)
    torch.testing.assert_close(labels.depth, expected["depth"], rtol=1e-5, atol=0, equal_nan=True)
    # The spread of log depth is the square root of E[l^2] - E[l]^2, two float32 sums over a
    # pixel's patches taken in another order than the reference's (one that depends on the
    # CPU's vector width): where the patches nearly agree, a few ulps of the difference move the
    # spread by far more than an ulp: one pixel of this room moves its confidence by 2e-5 on a
    # machine with AVX-512.
    error = (labels.depth_confidence - expected["depth_confidence"]).abs()
    assert float(error.max()) <= 1e-4
    assert float((error > 1e-5).float().mean()) < 1e-3
    torch.testing.assert_close(labels.normals, expected["normals"], rtol=0, atol=1e-5, equal_nan=True)
    # The confidence goes through acos of the normals' mean resultant length x, whose slope
    # 1/sin(spread) is infinite at x = 1: a few ulps of x (2e-7) move the spread by 2e-7/sin
    # radians, or by sqrt(4e-7) where the patches agree exactly. The tolerance follows that.
    spread = torch.deg2rad(expected["normals_spread_deg"])
    conditioning = (2e-6 / torch.sin(spread).clamp_min(1e-12)).clamp(max=5e-3)
    assert (spread > math.radians(1.0)).float().mean() > 0.2  # most pixels are well conditioned
    error = (labels.normals_confidence - expected["normals_confidence"]).abs()
    assert bool((error <= 1e-5 + conditioning).all()), float((error - conditioning).max())
    stats = dict(labels.stats)
    assert stats.pop("normals_disagreement_deg") == pytest.approx(
        expected["stats"].pop("normals_disagreement_deg"), abs=1e-3
    )
    assert_stats_close(stats, expected["stats"])
    assert stats["depth_nonfinite"] == (9 + 4 if kind == "metric_zdepth" and holes else 0)  # the NaN and inf holes
    assert stats["normals_nonfinite"] == (3 * 4 if holes else 0)
    assert stats["depth_coverage"] == stats["normals_coverage"] == 1.0


@pytest.mark.parametrize("top_k", [8, 1, 2, 0])
@pytest.mark.parametrize("maps", ["one_hot", "dense", "close", "mixed", "disagreeing"])
def test_semantic_matches_the_reference(room, maps, top_k):
    config = FusionConfig(semantic_top_k=top_k)
    outputs = dict(probs=room[maps], probs_confidence=room["confidence"] if maps in ("close", "mixed") else None)
    labels, kept, listed = fuse(room["cameras"], config, **outputs)
    expected = reference_fusion(room["cameras"], ERP_HEIGHT, config, **outputs)
    assert torch.equal(labels.semantic, expected["semantic"])
    torch.testing.assert_close(labels.semantic_confidence, expected["semantic_confidence"], rtol=0, atol=1e-5)
    assert_stats_close(labels.stats, expected["stats"])
    # Each kind of map takes its own way: one-hot maps leave nothing unknown and are not kept;
    # dense maps are kept for the pixels that cannot be certified; close calls need lists.
    if maps == "one_hot" or top_k == 1:
        assert kept == 0
    else:
        assert kept > 0
    if maps == "close":
        assert listed > 0


def test_semantic_without_kept_maps_lists_every_entry(room, monkeypatch):
    """Maps too large to keep: every entry's top-k list is made at once; same labels."""
    monkeypatch.setattr(fusion, "_KEEP_MAP_BYTES", 0)
    config = FusionConfig()
    labels, kept, _ = fuse(room["cameras"], config, probs=room["close"])
    expected = reference_fusion(room["cameras"], ERP_HEIGHT, config, probs=room["close"])
    assert kept == 0
    assert torch.equal(labels.semantic, expected["semantic"])
    torch.testing.assert_close(labels.semantic_confidence, expected["semantic_confidence"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("maps", "top_k", "read_values", "completes"),
    [
        ("dense", 8, 1 << 18, False),
        ("disagreeing", 8, 1 << 18, True),
        ("disagreeing", 8, 1000, True),
        ("mixed", 8, 1 << 18, False),
        ("mixed", 8, 1000, False),
        ("mixed", 2, 1 << 18, False),
        ("mixed", 0, 1 << 18, True),
    ],
)
def test_uncertain_pixels_are_summed_from_loud_classes_where_they_decide(
    room, maps, top_k, read_values, completes, monkeypatch
):
    """The pixels the entries' figures cannot certify are summed from their kept maps' loud
    classes, completed from every class at the entries that lack the top where those decide,
    and summed from every class of every entry where they do not: the reference's labels,
    whether the maps are read at once or in pieces. (This room's few uncertain pixels would
    read every class at once: the loud classes are read first from any count on.)"""
    monkeypatch.setattr(fusion, "_READ_VALUES", read_values)
    monkeypatch.setattr(fusion, "_LOUD_READS_FROM", 0)
    summed = {"exactly": 0, "lists": 0}  # pixels summed by each
    completed = []  # entries read in full outside `_summed_lists`, to complete a top's sum
    summing_lists = []

    def counted(name, pixels_of):
        method = getattr(PanoramaFusion, f"_summed_{name}")

        def count(self, *args):
            summed[name] += pixels_of(args)
            summing_lists.append(name == "lists")
            try:
                return method(self, *args)
            finally:
                summing_lists.pop()

        return count

    top_lists = PanoramaFusion._kept_top_lists

    def read_in_full(self, entries):
        if not summing_lists[-1]:
            completed.append(len(entries))
        return top_lists(self, entries)

    monkeypatch.setattr(PanoramaFusion, "_summed_exactly", counted("exactly", lambda args: len(args[0])))
    monkeypatch.setattr(PanoramaFusion, "_summed_lists", counted("lists", lambda args: args[-1]))
    monkeypatch.setattr(PanoramaFusion, "_kept_top_lists", read_in_full)
    config = FusionConfig(semantic_top_k=top_k)
    labels, kept, _ = fuse(room["cameras"], config, probs=room[maps])
    expected = reference_fusion(room["cameras"], ERP_HEIGHT, config, probs=room[maps])
    assert torch.equal(labels.semantic, expected["semantic"])
    torch.testing.assert_close(labels.semantic_confidence, expected["semantic_confidence"], rtol=0, atol=1e-5)
    assert kept > 0 and 0 < summed["lists"] < summed["exactly"], summed
    assert (sum(completed) > 0) == completes, completed


def test_batches_and_their_order_do_not_change_the_labels(room):
    config = FusionConfig()
    outputs = dict(depth=room["depth"], normals=room["normals"], probs=room["dense"])
    first, _, _ = fuse(room["cameras"], config, **outputs)
    shuffled = [[19, 3], [0, 1, 2], [4, 5, 6, 7, 8, 9, 10, 11, 12], [18, 17, 16, 15, 14, 13]]
    second, _, _ = fuse(room["cameras"], config, batches=shuffled, **outputs)
    for name in ("depth", "depth_confidence", "normals", "normals_confidence", "semantic", "semantic_confidence"):
        torch.testing.assert_close(getattr(second, name), getattr(first, name), rtol=0, atol=1e-6, equal_nan=True)


def test_a_geometry_serves_panorama_after_panorama(room):
    """The arrays one panorama gives back to the geometry carry nothing into the next one: with
    one geometry, panoramas A, B, A give A's labels twice, bit for bit, and B's as a new
    geometry gives them."""
    config = FusionConfig()
    first = dict(depth=room["depth"], normals=room["normals"], probs=room["dense"])
    second = dict(
        depth=room["relative"], depth_kind="relative_disparity", depth_confidence=room["confidence"],
        normals=room["normals"].flip(-1), probs=room["close"], probs_confidence=room["confidence"],
    )  # fmt: skip
    geometry = FusionGeometry.build(room["cameras"], ERP_HEIGHT, config)
    a, _, _ = fuse(room["cameras"], config, geometry=geometry, **first)
    assert geometry.spare  # the state and the slot-order copies came back
    b, _, _ = fuse(room["cameras"], config, geometry=geometry, **second)
    again, _, _ = fuse(room["cameras"], config, geometry=geometry, **first)
    fresh, _, _ = fuse(room["cameras"], config, **second)
    for name in ("depth", "depth_confidence", "semantic", "semantic_confidence", "normals", "normals_confidence"):
        assert torch.equal(getattr(again, name).nan_to_num(-7.0), getattr(a, name).nan_to_num(-7.0)), name
        assert torch.equal(getattr(b, name).nan_to_num(-7.0), getattr(fresh, name).nan_to_num(-7.0)), name
    assert again.stats == a.stats
    assert not torch.equal(a.depth.nan_to_num(-7.0), b.depth.nan_to_num(-7.0))


def test_top_class_finds_the_top_and_bounds_the_rest():
    g = torch.Generator().manual_seed(1)
    volume = torch.rand(150, 500, generator=g)
    volume[:, 0] = 0.5  # all tied
    volume[7, 1] = volume[9, 1] = 2.0  # two tied on top
    volume[3, 2] = volume[:, 2].max() + 1e-7  # the runner-up within the key's bits
    volume[:, 3] = -torch.rand(150, generator=g)  # negative values
    volume[5, 4], volume[0, 5], volume[149, 6] = math.nan, -math.inf, math.inf
    value, top, bound, finite = (t[0] for t in _top_class(volume.clone()[None])[:4])
    assert finite.tolist() == [True] * 4 + [False] * 3 + [True] * 493
    ok = finite
    # The value is the class's own, and the bound holds for every other class, tight to 1e-4
    # of the other classes' largest magnitude (the keys order magnitudes).
    assert torch.equal(value[ok], volume.gather(0, top.long()[None])[0][ok])
    others = volume.scatter(0, top.long()[None], -math.inf).amax(0)
    assert bool((bound[ok] >= others[ok]).all())
    magnitude = volume.abs().scatter(0, top.long()[None], 0.0).amax(0)
    assert bool(((bound - magnitude).abs() <= 1e-4 * magnitude + 1e-30)[ok].all())
    # Where the value is above the bound, the class is the one largest; ties and negative
    # tops never are.
    sure = ok & (value > bound)
    assert torch.equal(top[sure].long(), volume.argmax(0)[sure])
    assert sure.float().mean() > 0.9 and not sure[0] and not sure[1] and not sure[3]
    # Maps of a batch are their own: each gives what it gives alone.
    batch = torch.stack((torch.rand(150, 500, generator=g), volume))
    for k, alone in enumerate(_top_class(m[None].clone()) for m in batch):
        for got, expected in zip(_top_class(batch.clone()), alone, strict=True):
            torch.testing.assert_close(got[k], expected[0], rtol=0, atol=0, equal_nan=True)
    one, top_one, bound_one, _ = (t[0] for t in _top_class(volume[None, :1].clone())[:4])
    assert torch.equal(one, volume[0]) and not top_one.any() and not bound_one.any()


def test_top_class_reads_only_classes_above_the_quiet_ones(monkeypatch):
    """Maps whose classes are mostly quiet: a few far above `_QUIET` somewhere, the rest below
    it everywhere. Quiet classes raise the bound to the map's largest quiet value and nothing
    else; a class with a negative, infinite or NaN value is never quiet."""
    g = torch.Generator().manual_seed(4)
    C, S = 150, 600
    maps = torch.rand(6, C, S, generator=g) * fusion._QUIET * 0.9  # every class quiet
    for k in range(5):  # map k: k + 1 classes above the quiet ones, over the pixels in turn
        for j in range(k + 1):
            maps[k, 10 * j + k, j :: (k + 1)] = 0.3 + 0.5 * torch.rand(len(range(j, S, k + 1)), generator=g)
    maps[2, 40, 7] = -math.inf
    maps[3, 41, 8] = -(2.0**-120)  # a tiny negative value
    maps[3, 42, 9] = math.nan
    maps[4, 43, 10] = -math.nan
    maps[4, 44, 11] = math.inf
    # map 5: every class quiet, one of them up to exactly _QUIET
    maps[5, 77, 3] = fusion._QUIET
    value, top, bound, finite, loud_classes, count, quiet_bound = _top_class(maps.clone())
    expected_finite = torch.ones(6, S, dtype=torch.bool)
    expected_finite[2, 7] = expected_finite[3, 9] = expected_finite[4, 10] = expected_finite[4, 11] = False
    assert torch.equal(finite, expected_finite)
    ok = finite
    assert torch.equal(value[ok], maps.gather(1, top.long()[:, None])[:, 0][ok])
    others = maps.scatter(1, top.long()[:, None], -math.inf).amax(1)  # (6,S) every other class's largest
    assert bool((bound[ok] >= others[ok]).all())
    # The bound is the runner-up's magnitude (to 1e-4) or the largest quiet value, whichever is larger.
    loud = (maps.amax(2) > fusion._QUIET) | (maps.amin(2) < 0) | ~torch.isfinite(maps).all(2)  # (6,C)
    quiet_largest = torch.where(loud[..., None], 0.0, maps).amax((1, 2))[:, None]  # (6,1) per map
    assert torch.equal(count, loud.sum(1)) and torch.equal(quiet_bound, quiet_largest[:, 0])
    for k in range(6):  # each map's loud classes, ascending, first in its row
        assert torch.equal(loud_classes[k, : count[k]], torch.nonzero(loud[k]).squeeze(1)), k
    magnitude = torch.where(loud[..., None], maps.abs(), 0.0).scatter(1, top.long()[:, None], 0.0).amax(1)
    tight = torch.maximum(magnitude * (1 + 1e-4) + 1e-30, quiet_largest)
    assert bool((bound <= tight)[ok].all())
    assert bool((bound >= quiet_largest).all())
    # The loud classes are found: the top is certain wherever a loud class is on top, never in
    # map 5 (its own value is under the bound), whose values are all at most _QUIET.
    sure = ok & (value > bound)
    assert torch.equal(top[sure].long(), maps.argmax(1)[sure])
    assert sure[:5].float().mean() > 0.99 and not sure[5].any()
    assert bool((bound[5] == fusion._QUIET).all())
    # Maps that read many classes go map by map: the same results.
    for few in (0, 150):
        monkeypatch.setattr(fusion, "_FEW_LOUD", few)
        expected_all = (value, top, bound, finite, loud_classes, count, quiet_bound)
        for got, expected in zip(_top_class(maps.clone()), expected_all, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_uniform_blocks_are_those_whose_four_pixels_share_their_class():
    """Each pixel's 2 x 2 block (clamped at the last row and column) against a loop over it."""
    g = torch.Generator().manual_seed(7)
    for h, w, classes in ((5, 7, 2), (1, 4, 2), (6, 1, 2), (9, 9, 3), (2, 2, 1)):
        top = torch.randint(0, classes, (3, h, w), generator=g, dtype=torch.int32)
        expected = torch.empty(3, h, w, dtype=torch.int32)
        for y in range(h):
            for x in range(w):
                below, right = min(y + 1, h - 1), min(x + 1, w - 1)
                block = top[:, [y, y, below, below], [x, right, x, right]]
                expected[:, y, x] = torch.where((block == block[:, :1]).all(1), top[:, y, x], -1)
        assert torch.equal(_uniform(top), expected.view(3, h * w)), (h, w)


def test_positions_are_nonzeros_of_sparse_dense_and_offset_masks():
    g = torch.Generator().manual_seed(2)
    for n in (0, 7, 40_000, 40_003, 100_001):
        for share in (0.0, 0.0005, 0.02, 0.6, 1.0):
            mask = torch.rand(n, generator=g) < share
            mask[n // 2 : n // 2 + 5] = share > 0  # a run across word boundaries
            for part in (mask, mask[3:], mask[8:]):  # a view whose words are not aligned, and one that is
                got = _positions(part)
                assert got.dtype == torch.int64
                assert torch.equal(got, torch.nonzero(part).squeeze(1)), (n, share, part.storage_offset())


def test_lower_median_is_torch_median():
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 10, 100_000, 99_999):
        for dtype in (torch.float64, torch.float32):
            values = torch.randn(n, generator=g, dtype=dtype).abs()
            values[: n // 3] = values[0]  # ties
            got = _lower_median(values)
            assert got.dtype == dtype and torch.equal(got, values.median()), (n, dtype)


def test_slots_reduce_as_a_scatter_and_pair_as_listed():
    cameras = icosahedron_layout().cameras(PATCH)
    mapping = patch_to_erp(cameras, ERP_HEIGHT)
    layout = mapping.slot_layout()
    index = mapping.erp_index.long()
    values = torch.rand(2, len(index), dtype=torch.float64)
    placed = torch.empty_like(values).index_copy_(1, layout.position, values)
    scattered = torch.zeros(2, ERP_HEIGHT * 2 * ERP_HEIGHT, dtype=torch.float64).index_add_(1, index, values)
    torch.testing.assert_close(layout.to_raster(layout.reduce(placed)), scattered)
    highest = torch.full_like(scattered, -math.inf).scatter_reduce_(1, index[None].expand(2, -1), values, "amax")
    torch.testing.assert_close(layout.to_raster(layout.reduce(placed, "amax")), highest)
    keys = torch.randint(-(2**31), 2**31 - 1, (len(index),), dtype=torch.int32)  # integers keep their dtype
    top = torch.full((ERP_HEIGHT * 2 * ERP_HEIGHT,), -(2**31), dtype=torch.int32).scatter_reduce_(
        0, index, keys, "amax"
    )
    assert torch.equal(layout.to_raster(layout.reduce(keys[layout.entry.long()], "amax")), top)
    pixel_values = torch.rand(len(layout.rank), dtype=torch.float64)  # raster order
    assert torch.equal(layout.broadcast(pixel_values[layout.order])[layout.position], pixel_values[index])
    classes = torch.randint(0, 3, (len(index),)).double()  # mapping order
    pixel_classes = torch.randint(0, 3, (len(layout.rank),)).double()  # raster order
    differs = layout.differs(classes[layout.entry.long()], pixel_classes[layout.order])  # position order
    assert (
        torch.equal(differs[layout.position], classes != pixel_classes[index]) and differs.any() and not differs.all()
    )
    for max_pairs in (100, 1000, 10**6):
        listed = same_pixel_pairs(index)
        listed = listed[:: max(1, math.ceil(len(listed) / max_pairs))]
        assert torch.equal(layout.pairs(max_pairs), layout.position[listed])


def test_slot_ordered_correspondences_keep_every_slot_and_read_each_patch_forward():
    """The same entries in the same slots, each patch's entries in its slice with ascending
    positions, and a layout whose position and entry invert each other."""
    mapping = patch_to_erp(icosahedron_layout().cameras(PATCH), ERP_HEIGHT)
    layout = mapping.slot_layout()
    ordered, ordered_layout = mapping.slot_ordered()
    assert ordered.offsets == mapping.offsets and ordered_layout.starts == layout.starts
    assert torch.equal(ordered_layout.order, layout.order) and torch.equal(ordered_layout.rank, layout.rank)
    M = len(mapping)
    # What each slot holds (pixel, patch, patch coordinates) is unchanged.
    for name in ("erp_index", "x", "y"):
        before, after = getattr(mapping, name), getattr(ordered, name)
        assert torch.equal(after[ordered_layout.entry.long()], before[layout.entry.long()]), name
    assert torch.equal(ordered.patch_index[ordered_layout.entry.long()], mapping.patch_index[layout.entry.long()])
    assert torch.equal(ordered_layout.position[ordered_layout.entry.long()], torch.arange(M))
    for n in range(mapping.num_patches):
        positions = ordered_layout.position[ordered.entries_of(n)]
        assert bool((positions.diff() > 0).all()), n
    assert not all(bool((layout.position[mapping.entries_of(n)].diff() > 0).all()) for n in range(mapping.num_patches))


def test_candidates_are_the_classes_of_the_largest_values():
    """Per pixel, the class of a slot with the largest value (any of them on ties), -1 where
    no slot sees the pixel (a layout of three patches leaves most of the sphere unseen)."""
    mapping = patch_to_erp(icosahedron_layout().cameras(PATCH)[:3], ERP_HEIGHT)
    layout = mapping.slot_layout()
    g = torch.Generator().manual_seed(5)
    M, C = len(layout.entry), 150
    values = 2.0 ** torch.randint(-30, 30, (M,), generator=g).float()  # apart by factors of 2, or equal
    classes = torch.randint(-1, C, (M,), generator=g).float()
    got = _candidates(layout, values, classes, C)
    top = layout.reduce(values, "amax")
    largest = ~layout.differs(values, top)  # (M,) the slots that hold their pixel's largest value
    assert bool(
        (layout.reduce(largest & ~layout.differs(classes, got), "sum") > 0)[layout.count[layout.order] > 0].all()
    )
    unique = layout.reduce(largest, "sum") == 1
    assert unique.float().mean() > 0.1
    assert torch.equal(got[unique], layout.reduce_argmax(values, classes)[unique])
    unseen = layout.count[layout.order] == 0
    assert unseen.any() and bool((got[unseen] == -1).all())


def test_bilinear_corners_read_as_grid_sample():
    cameras = icosahedron_layout().cameras(PATCH)
    mapping = patch_to_erp(cameras, ERP_HEIGHT)
    grid = mapping.grid(4)[0, 0]  # (M_4,2)
    image = torch.rand(1, 13, 13)
    image[0, 6, 6] = math.nan
    corners = BilinearCorners.of_grid(grid, 13, 13)
    flat, weights = corners.read()
    read = (image.view(-1)[flat] * weights).sum(0)
    expected = F.grid_sample(image[None], grid[None, None], padding_mode="border", align_corners=False)[0, 0, 0]
    torch.testing.assert_close(read, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_nearest_blend_takes_each_pixel_from_the_patch_nearest_its_axis(room):
    """The "nearest" blend (the experiment's teacher-patches baseline), against a brute force
    over every patch: per ERP pixel, the patch whose optical axis is closest to the pixel's ray,
    its depth read bilinearly and turned into range, its class, no alignment, confidence 1."""
    from spherical.erp import erp_rays

    cameras = room["cameras"]
    config = FusionConfig(blend="nearest", align_metric_depth=False, single_view_agreement=1.0)
    labels, _, _ = fuse(cameras, config, depth=room["depth"], probs=room["one_hot"])
    rays = erp_rays(ERP_HEIGHT).reshape(-1, 3)  # (H*W,3) unit, world frame
    x, y, z = cameras.project(rays.expand(len(cameras), -1, -1))  # (P,H*W) each
    inside = (z > 0) & (x >= 0) & (x <= PATCH) & (y >= 0) & (y <= PATCH)
    cosine = torch.where(inside, cameras.optical_axes().float() @ rays.T, -2.0)  # (P,3) @ (3,H*W) -> (P,H*W)
    best = cosine.argmax(0)  # (H*W,)
    pixels = torch.arange(len(best))
    grid = torch.stack((x[best, pixels] * 2 / PATCH - 1, y[best, pixels] * 2 / PATCH - 1), -1)  # (H*W,2)

    def read(maps: torch.Tensor) -> torch.Tensor:  # (P,C,h,w) -> (C,H*W) at each pixel's best patch
        out = torch.empty(maps.shape[1], len(best))
        for p in range(len(cameras)):
            mine = best == p
            points = grid[mine][None, None].float()  # (1,1,n,2)
            out[:, mine] = F.grid_sample(maps[p : p + 1], points, align_corners=False)[0, :, 0]  # (C,n)
        return out

    expected_range = read(room["depth"][:, None])[0] / cosine[best, pixels]  # z-depth x ||c||, ||c|| = 1/cos
    expected_class = read(room["one_hot"]).argmax(0)
    depth = labels.depth.flatten()
    usable = torch.isfinite(depth) & torch.isfinite(expected_range)
    assert usable.float().mean() > 0.99
    close = torch.isclose(depth[usable], expected_range[usable].float(), rtol=1e-4)
    assert close.float().mean() > 0.999, float(close.float().mean())
    assert (labels.semantic.flatten() == expected_class).float().mean() > 0.995
    assert bool((labels.depth_confidence.flatten()[usable] > 0.999).all())
    # Unblended: the per-patch scale errors of the teacher show as steps, which blending smooths.
    blended, _, _ = fuse(cameras, FusionConfig(align_metric_depth=False), depth=room["depth"])
    assert not torch.allclose(blended.depth, labels.depth, equal_nan=True)


def test_unknown_blend_is_refused():
    with pytest.raises(ValueError, match="unknown fusion blend 'soft'"):
        FusionConfig(blend="soft")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fuses_as_the_cpu(room):
    """The fusion on a GPU, geometry and teacher outputs there, gives the CPU's labels: the
    same classes but at a few near ties (sums in another order), values to float32 rounding."""
    config = FusionConfig()
    outputs = dict(
        depth=room["depth"], normals=room["normals"], probs=room["dense"], probs_confidence=room["confidence"]
    )
    cpu, _, _ = fuse(room["cameras"], config, **outputs)
    gpu, _, _ = fuse(room["cameras"].to("cuda"), config, **{k: v.cuda() for k, v in outputs.items()})
    assert gpu.semantic.device.type == "cuda"
    assert (gpu.semantic.cpu() != cpu.semantic).float().mean() < 1e-3
    for name in ("depth", "depth_confidence", "normals", "normals_confidence", "semantic_confidence"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=1e-4, atol=1e-5, equal_nan=True)
