"""Training data: label stores as a torch `Dataset`, the train/validation split, and a sampler
that makes the data order a function of the seed and the step alone.

Every store the trainer reads is a label store (`storage.labelstore`): pseudo-labels from
`mtpano labels`, ground truth from `mtpano import`, or predictions from `mtpano predict`.
One item is one `ok` panorama of one store, at the training height:

    rgb                  (3,H,W) float32 RGB in [0,1], ERP (W = 2H)
    depth                (H,W) float32: range in metres (depth_metric) or aligned inverse
                         range (relative stores); 0 where there is no label
    semantic             (H,W) int64 class ids, 255 where there is no label
    normals              (3,H,W) float32 unit vectors, world frame; 0 where there is no label
    <task>_mask          (H,W) bool: the pixel has a label
    <task>_confidence    (H,W) float32 in [0,1], 0 where there is no label
    depth_metric         () bool: the store's depth is metric range (else relative disparity)
    index, store         () int64: the panorama's row in its store, the store's position
    pano_id              str
    readable             () bool: False for a panorama whose arrays could not be read (all
                         masks false, so it adds nothing to any loss)

A task a store lacks comes as zeros with an all-false mask, so stores with different task
sets mix in one batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate

from model.blocks import resize_erp
from spherical.ade20k import IGNORE_ID
from spherical.erp import erp_width
from storage.labelstore import LABEL_TASKS, STATUS_OK, LabelStore, StoreError, StoreSpec
from trainer.augment import AugmentConfig, augment

# zarr's reads per DataLoader worker in flight at once: a few shards per panorama, a few
# workers per GPU; its default (10 per process) multiplied by every worker swamps a laptop disk.
ZARR_CONCURRENCY = 4


class DataError(ValueError):
    """Training data that cannot be used as asked (missing store, no ok panorama, class lists
    that differ, a batch larger than the training set)."""


# ---------------------------------------------------------------------- stores
@dataclass(frozen=True)
class StoreInfo:
    """A store the run reads: what its `train_config.json` records and what the dataset needs."""

    url: str
    spec: StoreSpec
    # Panoramas with an `ok` row: (index, pano_id), in index order.
    panoramas: tuple[tuple[int, str], ...]
    kind: str

    @property
    def spec_hash(self) -> str:
        """sha256 of the store's spec: what makes its labels (teachers, layout, fusion)."""
        return hashlib.sha256(json.dumps(self.spec.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def record(self, role: str) -> dict[str, object]:
        return {
            "url": self.url,
            "role": role,
            "kind": self.kind,
            "panoramas": len(self.panoramas),
            "spec_hash": self.spec_hash,
            "tasks": list(self.spec.tasks),
            "depth_kind": self.spec.depth_kind,
            "height": self.spec.erp_height,
        }


def open_store_info(url: str) -> StoreInfo:
    """Open the store at `url` and list its ok panoramas; a DataError names what is wrong."""
    try:
        store = LabelStore.open(url)
    except (StoreError, OSError, ValueError) as err:
        raise DataError(f"{url}: {err}" if url not in str(err) else str(err)) from None
    if not store.spec.source.get("has_rgb", True):
        raise DataError(f"{url}: the store has no RGB images (its dataset ships none): nothing to train or validate on")
    rows = [r for r in store.rows() if r["status"] == STATUS_OK]
    if not rows:
        raise DataError(f"{url}: no panorama with status ok (nothing to train on)")
    panoramas = tuple((int(r["index"]), str(r["pano_id"])) for r in rows)
    return StoreInfo(url=url, spec=store.spec, panoramas=panoramas, kind=store.spec.kind)


def check_class_lists(stores: Sequence[StoreInfo]) -> tuple[str, ...]:
    """The class names every semantic store shares (() when none has semantics)."""
    semantic = [s for s in stores if "semantic" in s.spec.tasks]
    if not semantic:
        return ()
    first = semantic[0]
    for other in semantic[1:]:
        if other.spec.class_names != first.spec.class_names:
            raise DataError(
                f"stores have different class lists: {first.url} has {len(first.spec.class_names)} classes "
                f"({_class_summary(first.spec.class_names)}), {other.url} has {len(other.spec.class_names)} "
                f"({_class_summary(other.spec.class_names)})"
            )
    return first.spec.class_names


def _class_summary(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def store_tasks(stores: Sequence[StoreInfo]) -> tuple[str, ...]:
    """The tasks any of the stores carries, in LABEL_TASKS order."""
    return tuple(t for t in LABEL_TASKS if any(t in s.spec.tasks for s in stores))


# ---------------------------------------------------------------------- split
def id_fraction(pano_id: str) -> float:
    """A uniform number in [0, 1) fixed by the panorama id alone (sha256)."""
    return int.from_bytes(hashlib.sha256(pano_id.encode()).digest()[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Sample:
    """One panorama of one store."""

    store: int
    index: int
    pano_id: str


def split_samples(stores: Sequence[StoreInfo], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of the stores: a panorama is held out when the hash of its id
    (`id_fraction`) is below `val_fraction`, so adding panoramas to a store never moves one
    between the two sets, and a panorama with the same id in two stores (its labels and its
    ground truth) lands on the same side. At least one panorama is held out when
    `val_fraction` > 0: the one with the smallest hash, when the rule picks none."""
    samples = [Sample(k, index, pano_id) for k, s in enumerate(stores) for index, pano_id in s.panoramas]
    if val_fraction <= 0:
        return samples, []
    held = [s for s in samples if id_fraction(s.pano_id) < val_fraction]
    if not held:
        first = min(id_fraction(s.pano_id) for s in samples)
        held = [s for s in samples if id_fraction(s.pano_id) == first]
    held_ids = {s.pano_id for s in held}
    return [s for s in samples if s.pano_id not in held_ids], held


def limit_samples(samples: list[Sample], limit: int) -> list[Sample]:
    """At most `limit` samples (0: all): the same fixed subset every time (smallest id hashes)."""
    if limit <= 0 or len(samples) <= limit:
        return samples
    return sorted(samples, key=lambda s: (id_fraction(s.pano_id), s.store, s.index))[:limit]


# ---------------------------------------------------------------------- resizing
def _resample(x: Tensor, height: int) -> Tensor:
    """(N,C,h,2h) float -> (N,C,H,2H): area average when shrinking, bilinear wrapping in
    longitude (`model.blocks.resize_erp`) when growing."""
    size = (height, erp_width(height))
    if x.shape[-2] == height:
        return x
    if x.shape[-2] > height:
        return F.adaptive_avg_pool2d(x, size)
    return resize_erp(x, size, "circular")


def _masked_resample(value: Tensor, mask: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """(C,h,w) values and (h,w) bool validity -> the masked average at `height` and its
    validity (valid where at least half of the area, or the interpolation weight, was valid)."""
    m = mask.float()  # (h,w)
    weight = _resample(m[None, None], height)[0, 0]  # (H,W)
    total = _resample((value * m)[None], height)[0]  # (C,H,W)
    valid = weight >= 0.5
    return torch.where(valid, total / weight.clamp_min(1e-6), 0.0), valid


def resize_item(item: dict[str, Tensor], height: int) -> dict[str, Tensor]:
    """An item (module doc) at another ERP height: RGB area-averaged (bilinear when growing),
    classes nearest, depth averaged in log space, normals averaged and renormalised,
    confidences averaged over the labelled pixels; each mask follows its map."""
    if item["rgb"].shape[-2] == height:
        return item
    out = dict(item)
    out["rgb"] = _resample(item["rgb"][None], height)[0].clamp(0.0, 1.0)
    depth_mask = item["depth_mask"]
    log_depth = torch.log(torch.where(depth_mask, item["depth"], 1.0))
    log_depth, out["depth_mask"] = _masked_resample(log_depth[None], depth_mask, height)
    out["depth"] = torch.where(out["depth_mask"], torch.exp(log_depth[0]), 0.0)
    normals, valid = _masked_resample(item["normals"], item["normals_mask"], height)
    norm = torch.linalg.vector_norm(normals, dim=0)  # (H,W)
    out["normals_mask"] = valid & (norm > 1e-3)
    out["normals"] = torch.where(out["normals_mask"], normals / norm.clamp_min(1e-3), 0.0)
    size = (height, erp_width(height))
    semantic = F.interpolate(item["semantic"][None, None].float(), size, mode="nearest-exact")[0, 0].long()
    out["semantic"] = semantic
    out["semantic_mask"] = semantic != IGNORE_ID
    for task in LABEL_TASKS:
        conf, _ = _masked_resample(item[f"{task}_confidence"][None], item[f"{task}_mask"], height)
        out[f"{task}_confidence"] = torch.where(out[f"{task}_mask"], conf[0], 0.0)
    return out


# ---------------------------------------------------------------------- items
def unlabelled(task: str, height: int) -> dict[str, Tensor]:
    """`task`'s entries of an item without any label, at `height`."""
    H, W = height, erp_width(height)
    value = {
        "depth": lambda: torch.zeros(H, W),
        "semantic": lambda: torch.full((H, W), IGNORE_ID, dtype=torch.int64),
        "normals": lambda: torch.zeros(3, H, W),
    }[task]()
    return {task: value, f"{task}_mask": torch.zeros(H, W, dtype=torch.bool), f"{task}_confidence": torch.zeros(H, W)}


def empty_item(height: int) -> dict[str, Tensor]:
    """The label part of an item with no label at all, at `height`."""
    item = {"rgb": torch.zeros(3, height, erp_width(height))}
    for task in LABEL_TASKS:
        item.update(unlabelled(task, height))
    return item


def item_from_arrays(arrays: dict[str, np.ndarray], spec: StoreSpec, tasks: Sequence[str]) -> dict[str, Tensor]:
    """The label part of an item from a panorama's stored arrays (`LabelStore.read`), at the
    store's height; tasks outside `tasks` (or the store's) come without labels.

    Conversions run in torch, in place where they can: this is the data loader's hot path
    (numpy's float16 conversion alone is several times slower)."""
    item = {"rgb": torch.from_numpy(arrays["rgb"]).float().div_(255.0)}  # (3,H,W) uint8 -> float32 in [0,1]
    for task in LABEL_TASKS:
        if task not in tasks or task not in spec.tasks:
            item.update(unlabelled(task, spec.erp_height))
            continue
        raw = torch.from_numpy(arrays[task])
        if task == "semantic":
            value = raw.long()
            mask = value != IGNORE_ID
        else:
            value = raw.float()
            # A store's missing normal is NaN in all three channels: the first one tells.
            mask = (value > 0) if task == "depth" else ~torch.isnan(value[0])  # NaN > 0 is False
            value.masked_fill_(~mask, 0.0)  # (H,W) mask broadcasts over the normals' 3 channels
        confidence = torch.from_numpy(arrays[f"{task}_confidence"]).float()
        item[task] = value
        item[f"{task}_mask"] = mask
        item[f"{task}_confidence"] = confidence.nan_to_num_(0.0).masked_fill_(~mask, 0.0)
    return item


class PanoramaDataset(Dataset):
    """The `ok` panoramas of some stores as items (module doc).

    Stores are opened lazily, once per process: zarr and fsspec objects must not cross the
    fork that starts a DataLoader worker. Keys are a position in `samples`, or (position,
    sample seed) from `StreamSampler`: augmentations draw from a generator seeded by the
    sample seed, so the data a step sees depends on the seed and the step alone (not on the
    number of workers, nor on whether the run was resumed).
    """

    def __init__(
        self,
        stores: Sequence[StoreInfo],
        samples: Sequence[Sample],
        height: int,
        tasks: Sequence[str],
        augment_config: AugmentConfig | None = None,
    ) -> None:
        self.urls = [s.url for s in stores]
        self.specs = [s.spec for s in stores]
        self.samples = list(samples)
        self.height = height
        self.tasks = tuple(tasks)
        self.augment_config = augment_config
        self._opened: dict[int, LabelStore] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.samples)

    def _store(self, k: int) -> LabelStore:
        if self._pid != os.getpid():
            self._opened, self._pid = {}, os.getpid()
        if k not in self._opened:
            self._opened[k] = LabelStore.open(self.urls[k])
        return self._opened[k]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor | str]:
        position, sample_seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[position]
        spec = self.specs[sample.store]
        names = ["rgb"] + [n for t in self.tasks if t in spec.tasks for n in (t, f"{t}_confidence")]
        try:
            arrays = self._store(sample.store).read(sample.index, names)
            readable = True
        except Exception as err:  # a damaged shard skips its panorama; the loop counts and reports it
            import warnings

            warnings.warn(f"skipped {sample.pano_id} ({self.urls[sample.store]}): {err}", stacklevel=1)
            readable = False
        if readable:
            item = resize_item(item_from_arrays(arrays, spec, self.tasks), self.height)
            if self.augment_config is not None:
                generator = torch.Generator().manual_seed(sample_seed if sample_seed is not None else position)
                item = augment(item, self.augment_config, generator)
        else:
            item = empty_item(self.height)
        item.update(
            depth_metric=torch.tensor(spec.depth_kind == "metric_range"),
            index=torch.tensor(sample.index),
            store=torch.tensor(sample.store),
            readable=torch.tensor(readable),
        )
        item["pano_id"] = sample.pano_id
        return item


# ---------------------------------------------------------------------- batches
# Compact dtypes of the maps while a batch crosses from a loader process to the training
# process (a third of the bytes: 512x1024 items shrink from 27 MB to 10 MB); `to_device`
# restores the item format on the device. The stores keep float16 labels and 8-bit colour
# and classes, so the trip loses no more than one more float16 rounding of resized labels.
_WIRE_FLOAT16 = ("depth", "normals", "depth_confidence", "semantic_confidence", "normals_confidence")


def collate_packed(items: Sequence[dict[str, Tensor | str]]) -> dict[str, Any]:
    """DataLoader `collate_fn`: the items stacked, with rgb as uint8 (round(255 x)), class
    ids as uint8, depth, normals and confidences as float16 (`to_device` undoes it)."""
    packed = []
    for item in items:
        item = dict(item)
        item["rgb"] = item["rgb"].mul(255.0).round_().to(torch.uint8)
        item["semantic"] = item["semantic"].to(torch.uint8)
        for key in _WIRE_FLOAT16:
            item[key] = item[key].to(torch.float16)
        packed.append(item)
    return default_collate(packed)


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch on `device` in the item format (module doc): tensors moved, then a
    packed batch (`collate_packed`) converted back to float32 RGB in [0,1], int64 class ids
    and float32 labels there. Pano ids stay a list."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
    if moved["rgb"].dtype == torch.uint8:
        moved["rgb"] = moved["rgb"].float().div_(255.0)
        moved["semantic"] = moved["semantic"].long()
        for key in _WIRE_FLOAT16:
            moved[key] = moved[key].float()
    return moved


def init_data_worker(_: int) -> None:
    """DataLoader `worker_init_fn`: one torch thread per data process (they run beside the
    training threads), and a bounded number of zarr reads in flight."""
    import zarr

    torch.set_num_threads(1)
    zarr.config.set({"async.concurrency": ZARR_CONCURRENCY})


# ---------------------------------------------------------------------- order
def _mix(*values: int) -> int:
    """A 63-bit seed from integers (sha256), for per-epoch permutations and per-sample seeds."""
    digest = hashlib.sha256(b",".join(str(v).encode() for v in values)).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class StreamSampler(Sampler[tuple[int, int]]):
    """An endless stream of (position, sample seed): epoch after epoch, each a permutation of
    the `n` samples drawn from (seed, epoch). The stream is one global sequence; worker
    `rank` of `world` takes its elements rank, rank + world, rank + 2 world, ... from global
    element `start` on. So global step t of a run with global batch B always sees elements
    [tB, (t+1)B) of the sequence, however many workers share them, and a resumed run
    continues exactly where the interrupted one stopped (start = steps done x B)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        assert n > 0 and 0 <= rank < world, f"bad sampler arguments n={n} rank={rank} world={world}"
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = self.start + self.rank
        epoch, perm = -1, None
        while True:
            if g // self.n != epoch:
                epoch = g // self.n
                perm = self._permutation(epoch)
            yield int(perm[g % self.n]), _mix(self.seed, "sample", g)
            g += self.world

    def __len__(self) -> int:  # endless; DataLoader only needs a number for its own bookkeeping
        return math.iinfo(np.int64).max
