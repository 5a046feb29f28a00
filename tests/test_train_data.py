"""The trainer's data: stores as items, the train/validation split, the data order, resizing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from quality_stores import label, make_rooms

from spherical.ade20k import IGNORE_ID
from storage.importers import ImportConfig, import_dataset
from storage.labelstore import LabelStore
from trainer.augment import AugmentConfig
from trainer.data import (
    DataError,
    PanoramaDataset,
    Sample,
    StreamSampler,
    check_class_lists,
    id_fraction,
    item_from_arrays,
    open_store_info,
    resize_item,
    split_samples,
)

NO_AUGMENT = AugmentConfig(yaw=False, mirror=False, color_jitter=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return label(make_rooms(root, [1, 2, 3]), root / "labels")


def test_items_hold_the_stored_labels_in_the_documented_format(store):
    info = open_store_info(store.url)
    assert [p for _, p in info.panoramas] == ["room_00001", "room_00002", "room_00003"]
    dataset = PanoramaDataset([info], [Sample(0, 1, "room_00002")], 64, info.spec.tasks)
    item = dataset[0]
    arrays = store.read(1)
    assert item["rgb"].shape == (3, 64, 128) and item["rgb"].dtype == torch.float32
    assert torch.equal(item["rgb"], torch.from_numpy(arrays["rgb"]).float() / 255)
    depth = torch.from_numpy(arrays["depth"].astype(np.float32))
    assert torch.equal(item["depth_mask"], torch.isfinite(depth))
    assert torch.equal(item["depth"][item["depth_mask"]], depth[item["depth_mask"]])
    assert item["semantic"].dtype == torch.int64
    assert torch.equal(item["semantic"], torch.from_numpy(arrays["semantic"]).long())
    assert torch.equal(item["semantic_mask"], item["semantic"] != IGNORE_ID)
    normals = item["normals"][:, item["normals_mask"]]
    assert torch.allclose(torch.linalg.vector_norm(normals, dim=0), torch.ones(1), atol=2e-3)
    assert bool(item["depth_metric"]) and bool(item["readable"]) and item["pano_id"] == "room_00002"
    for task in ("depth", "semantic", "normals"):
        conf = item[f"{task}_confidence"]
        assert float(conf.min()) >= 0 and float(conf.max()) <= 1
        assert float(conf[~item[f"{task}_mask"]].abs().sum()) == 0


def test_a_task_the_store_lacks_comes_without_labels(tmp_path):
    depth_only = label(make_rooms(tmp_path, [5]), tmp_path / "depth", semantic_teacher="none", normal_teacher="none")
    info = open_store_info(depth_only.url)
    item = PanoramaDataset([info], [Sample(0, 0, "room_00005")], 64, ("depth", "semantic", "normals"))[0]
    assert bool(item["depth_mask"].all())
    assert not bool(item["semantic_mask"].any()) and not bool(item["normals_mask"].any())
    assert bool((item["semantic"] == IGNORE_ID).all()) and float(item["normals"].abs().sum()) == 0


def test_labels_of_another_size_are_resized(store):
    info = open_store_info(store.url)
    item = item_from_arrays(store.read(0), info.spec, info.spec.tasks)
    half = resize_item(item, 32)
    assert half["rgb"].shape == (3, 32, 64) and half["semantic"].shape == (32, 64)
    # Depth is averaged in log space: the geometric mean of each 2x2 block of valid pixels.
    blocks = item["depth"].view(32, 2, 64, 2).permute(0, 2, 1, 3).reshape(32, 64, 4)  # (H,W) -> (H/2,W/2,4)
    assert torch.allclose(half["depth"], blocks.log().mean(-1).exp(), rtol=1e-5)
    # Normals: the renormalised mean; classes: one of the block's classes (nearest, never mixed).
    n = item["normals"].view(3, 32, 2, 64, 2).mean((2, 4))  # (3,H,W) -> (3,H/2,W/2)
    assert torch.allclose(half["normals"], n / torch.linalg.vector_norm(n, dim=0), atol=1e-5)
    classes = item["semantic"].view(32, 2, 64, 2).permute(0, 2, 1, 3).reshape(32, 64, 4)  # (H/2,W/2,4)
    assert bool((classes == half["semantic"][..., None]).any(-1).all())
    grown = resize_item(item, 96)
    assert grown["depth"].shape == (96, 192) and bool(grown["depth_mask"].all())
    ratio = grown["depth"].max() / item["depth"].max()
    assert 0.9 < float(ratio) <= 1.0 + 1e-6  # interpolated in log space: no overshoot


def test_masks_follow_resized_maps():
    item = {
        "rgb": torch.rand(3, 4, 8),
        "depth": torch.ones(4, 8) * 2.0,
        "depth_mask": torch.ones(4, 8, dtype=torch.bool),
        "semantic": torch.full((4, 8), IGNORE_ID, dtype=torch.int64),
        "semantic_mask": torch.zeros(4, 8, dtype=torch.bool),
        "normals": torch.zeros(3, 4, 8),
        "normals_mask": torch.zeros(4, 8, dtype=torch.bool),
    }
    item["depth_mask"][:, :3] = False  # columns 0-2 unlabelled
    for task in ("depth", "semantic", "normals"):
        item[f"{task}_confidence"] = item[f"{task}_mask"].float()
    half = resize_item(item, 2)
    # 2x2 blocks: columns (0,1) have no label, (2,3) half, (4,5) and (6,7) all.
    assert half["depth_mask"].tolist() == [[False, True, True, True]] * 2
    assert torch.allclose(half["depth"][half["depth_mask"]], torch.tensor(2.0))
    assert not bool(half["semantic_mask"].any()) and not bool(half["normals_mask"].any())


def test_validation_split_is_a_fixed_function_of_the_ids(store, tmp_path):
    info = open_store_info(store.url)
    fractions = {p: id_fraction(p) for _, p in info.panoramas}
    assert all(0 <= f < 1 for f in fractions.values())
    threshold = sorted(fractions.values())[1]  # the rule holds out exactly the smallest hash
    train, val = split_samples([info], threshold)
    assert [s.pano_id for s in val] == [min(fractions, key=fractions.get)]
    assert len(train) == 2 and not {s.pano_id for s in train} & {s.pano_id for s in val}
    # A tiny fraction still holds out one panorama; zero holds out none.
    assert len(split_samples([info], 1e-9)[1]) == 1 and split_samples([info], 0.0)[1] == []
    # Adding panoramas never moves one: the same ids are held out with more rooms in the store.
    make_rooms(tmp_path, [1, 2, 3, 7, 8, 9, 10])
    import_dataset(tmp_path, str(tmp_path / "more"), ImportConfig(format="synth"))
    _, val_big = split_samples([open_store_info(str(tmp_path / "more"))], threshold)
    held = {s.pano_id for s in val_big}
    assert held == {p for p in held if fractions.get(p, 0) < threshold} and val[0].pano_id in held


def test_stream_sampler_splits_one_global_order_over_workers():
    one = StreamSampler(5, seed=3)
    stream = [next(it) for it in [iter(one)] for _ in range(17)]
    positions = [p for p, _ in stream]
    # Epochs are permutations: every sample once per epoch, in an order that changes.
    assert sorted(positions[:5]) == list(range(5)) and sorted(positions[5:10]) == list(range(5))
    assert positions[:5] != positions[5:10]
    workers = [iter(StreamSampler(5, seed=3, rank=r, world=2)) for r in range(2)]
    interleaved = [next(workers[k % 2]) for k in range(16)]
    assert interleaved == stream[:16]  # worker r takes elements r, r + 2, ...: disjoint, same union
    resumed = iter(StreamSampler(5, seed=3, start=7))
    assert [next(resumed) for _ in range(10)] == stream[7:]
    assert len({s for _, s in stream}) == len(stream)  # every sample its own augmentation seed


def test_augmented_items_depend_on_the_sample_seed_only(store):
    info = open_store_info(store.url)
    dataset = PanoramaDataset([info], [Sample(0, 0, "room_00001")], 64, info.spec.tasks, AugmentConfig())
    a, b, c = dataset[(0, 11)], dataset[(0, 11)], dataset[(0, 12)]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["normals"], b["normals"])
    assert not torch.equal(a["rgb"], c["rgb"])
    plain = PanoramaDataset([info], [Sample(0, 0, "room_00001")], 64, info.spec.tasks, NO_AUGMENT)[(0, 11)]
    assert torch.equal(
        plain["depth"], PanoramaDataset([info], [Sample(0, 0, "room_00001")], 64, info.spec.tasks)[0]["depth"]
    )


def test_an_unreadable_shard_gives_an_empty_item_and_a_warning(store, tmp_path):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(store.url, copy)
    damaged = LabelStore.open(str(copy))
    shards = sorted((copy / "depth" / "c").rglob("*"))
    files = [p for p in shards if p.is_file() and p.relative_to(copy / "depth" / "c").parts[0] == "1"]
    assert files, shards
    for f in files:
        f.write_bytes(b"not a shard")
    info = open_store_info(damaged.url)
    dataset = PanoramaDataset([info], [Sample(0, 1, "room_00002")], 64, info.spec.tasks)
    with pytest.warns(UserWarning, match="room_00002"):
        item = dataset[0]
    assert not bool(item["readable"]) and not any(bool(item[f"{t}_mask"].any()) for t in info.spec.tasks)


def test_store_errors_are_one_line(tmp_path, store):
    with pytest.raises(DataError, match="not a label store"):
        open_store_info(str(tmp_path / "missing"))
    other = open_store_info(store.url)
    fake = type(other)(url="other", spec=_with_classes(other.spec, ("wall", "floor")), panoramas=(), kind="labels")
    with pytest.raises(DataError, match=r"different class lists: .* 150 classes .* other has 2"):
        check_class_lists([other, fake])


def _with_classes(spec, names):
    from dataclasses import replace

    return replace(spec, class_names=tuple(names))


def test_id_fraction_is_uniform_enough():
    values = np.array([id_fraction(f"room_{i:05d}") for i in range(2000)])
    assert abs(values.mean() - 0.5) < 0.03 and math.isclose((values < 0.05).mean(), 0.05, abs_tol=0.015)
