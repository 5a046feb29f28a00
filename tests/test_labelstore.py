"""Label stores: Zarr v3 layout, one shard per panorama, row-file commits and the parquet manifest."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from storage.labelstore import (
    CONVENTIONS_VERSION,
    LabelStore,
    PanoramaEntry,
    StoreError,
    StoreSpec,
    array_specs,
)

CLASSES = ("wall", "floor", "ceiling")
LABEL_ARRAYS = [
    "rgb",
    "depth",
    "semantic",
    "normals",
    "depth_confidence",
    "semantic_confidence",
    "normals_confidence",
]


def _spec(**changes: Any) -> StoreSpec:
    fields: dict[str, Any] = {
        "erp_height": 8,
        "tasks": ("depth", "semantic", "normals"),
        "depth_kind": "metric_range",
        "class_names": CLASSES,
        "teachers": {
            "depth": {"spec": "hf:depth-anything", "revision": "abc123"},
            "semantic": {"spec": "sim"},
            "normals": {"spec": "geometric"},
        },
        "layout": "icosahedron",
        "fov_deg": (90.0,) * 4,
        "patch_size": 4,
        "keep_patches": False,
        "fusion": {"border_falloff": 0.25, "align": True},
    }
    return StoreSpec(**{**fields, **changes})


def _entries(n: int, start: int = 0) -> list[PanoramaEntry]:
    return [PanoramaEntry(f"rooms/r{i}", i, f"/data/rooms/r{i}.png") for i in range(start, start + n)]


def _arrays(spec: StoreSpec, seed: int) -> dict[str, np.ndarray]:
    """One panorama's arrays: random values in range, so no chunk is all fill and every shard is written."""
    rng = np.random.default_rng(seed)
    out = {}
    for a in array_specs(spec):
        if a.name in ("rgb", "patches/rgb"):
            out[a.name] = rng.integers(0, 255, a.shape, np.uint8)
        elif a.dtype == "uint8":
            out[a.name] = rng.integers(0, len(spec.class_names), a.shape, np.uint8)
        else:
            out[a.name] = rng.uniform(0.1, 1.0, a.shape).astype(a.dtype)
    return out


def _row(entry: PanoramaEntry, **stats: Any) -> dict[str, Any]:
    return {"pano_id": entry.pano_id, "source": entry.source, "t_decode": 0.25, **stats}


def _assert_unwritten(store: LabelStore, index: int) -> None:
    """The panorama holds only fill values: no label anywhere."""
    data = store.read(index)
    assert np.isnan(data["depth"]).all() and np.isnan(data["normals"]).all()
    assert (data["semantic"] == 255).all() and (data["rgb"] == 0).all()
    for task in ("depth", "semantic", "normals"):
        assert (data[f"{task}_confidence"] == 0).all()


def _by_index(store: LabelStore) -> dict[int, dict[str, Any]]:
    return {r["index"]: r for r in store.rows()}


# ---------------------------------------------------------------------------------------------- layout


def test_create_makes_the_documented_arrays(tmp_path: Path) -> None:
    spec = _spec()
    store = LabelStore.create(str(tmp_path / "store"), spec, _entries(3), {"mtpano_version": "test"})
    H, W = 8, 16
    expected = {
        "rgb": ((3, 3, H, W), np.uint8, 0),
        "depth": ((3, H, W), np.float16, math.nan),
        "semantic": ((3, H, W), np.uint8, 255),
        "normals": ((3, 3, H, W), np.float16, math.nan),
        "depth_confidence": ((3, H, W), np.float16, 0),
        "semantic_confidence": ((3, H, W), np.float16, 0),
        "normals_confidence": ((3, H, W), np.float16, 0),
    }
    assert [a.name for a in array_specs(spec)] == LABEL_ARRAYS
    for name, (shape, dtype, fill) in expected.items():
        array = store.group[name]
        assert array.shape == shape and array.dtype == dtype, name
        assert array.shards == (1, *shape[1:]), name  # one shard holds one whole panorama
        if math.isnan(fill):
            assert math.isnan(array.fill_value), name
        else:
            assert array.fill_value == fill, name
        assert array.compressors[0].cname.value == "zstd", name
    assert store.num_panoramas == 3
    for i in range(3):
        _assert_unwritten(store, i)
    assert [(r["pano_id"], r["index"], r["source"], r["status"]) for r in store.rows()] == [
        (f"rooms/r{i}", i, f"/data/rooms/r{i}.png", "pending") for i in range(3)
    ]


def test_arrays_follow_the_tasks() -> None:
    semantic_only = _spec(tasks=("semantic",), depth_kind=None)
    assert [a.name for a in array_specs(semantic_only)] == ["rgb", "semantic", "semantic_confidence"]
    depth_only = _spec(tasks=("depth",), class_names=(), depth_kind="relative_disparity")
    assert [a.name for a in array_specs(depth_only)] == ["rgb", "depth", "depth_confidence"]


def test_keep_patches_adds_patch_arrays(tmp_path: Path) -> None:
    spec = _spec(keep_patches=True, fov_deg=(90.0, 90.0, 75.0, 60.0, 90.0), patch_size=6)
    P, s = 5, 6
    expected = {
        "patches/rgb": ((P, 3, s, s), "uint8"),
        "patches/rotation": ((P, 3, 3), "float32"),
        "patches/fov_x_deg": ((P,), "float32"),
        "patches/depth": ((P, s, s), "float32"),
        "patches/normals": ((P, 3, s, s), "float16"),
        "patches/semantic": ((P, s, s), "uint8"),
        "patches/semantic_confidence": ((P, s, s), "float16"),
    }
    specs = {a.name: a for a in array_specs(spec)}
    assert list(specs) == LABEL_ARRAYS + list(expected)
    for name, (shape, dtype) in expected.items():
        assert (specs[name].shape, specs[name].dtype) == (shape, dtype), name
    depth_patches = [a.name for a in array_specs(_spec(keep_patches=True, tasks=("depth",), class_names=()))]
    assert [n for n in depth_patches if n.startswith("patches/")] == [
        "patches/rgb",
        "patches/rotation",
        "patches/fov_x_deg",
        "patches/depth",
    ]

    store = LabelStore.create(str(tmp_path / "store"), spec, _entries(2), {})
    for name, (shape, _) in expected.items():
        assert store.group[name].shape == (2, *shape)
    written = _arrays(spec, seed=3)
    store.write_panorama(1, written, _row(_entries(2)[1]))
    back = LabelStore.open(str(tmp_path / "store")).read(1, names=list(expected))
    for name in expected:
        assert np.array_equal(back[name], written[name]), name
    assert np.isnan(store.read(0, names=["patches/rotation"])["patches/rotation"]).all()


def test_one_shard_file_per_written_panorama(tmp_path: Path) -> None:
    spec = _spec()
    url = str(tmp_path / "store")
    store = LabelStore.create(url, spec, _entries(4), {})
    for index in (1, 3):
        store.write_panorama(index, _arrays(spec, seed=index), _row(_entries(4)[index]))
    for name in LABEL_ARRAYS:
        chunks = tmp_path / "store" / name / "c"
        assert sorted(p.name for p in chunks.iterdir()) == ["1", "3"], name
        for index in ("1", "3"):
            files = [p for p in (chunks / index).rglob("*") if p.is_file()]
            assert len(files) == 1, (name, index, files)
    _assert_unwritten(store, 0)
    _assert_unwritten(store, 2)


@pytest.mark.parametrize(("erp_height", "inner"), [(300, (300, 300)), (600, (300, 400)), (1024, (512, 512))])
def test_a_large_panorama_is_still_one_shard(tmp_path: Path, erp_height: int, inner: tuple[int, int]) -> None:
    """Above 512 columns a shard holds several inner chunks (for cropped reads) that divide it, but stays one file."""
    H, W = erp_height, 2 * erp_height
    spec = _spec(erp_height=H, tasks=("depth",), class_names=())
    store = LabelStore.create(str(tmp_path / "store"), spec, _entries(2), {})
    assert store.group["depth"].chunks == (1, *inner) and store.group["depth"].shards == (1, H, W)
    depth = np.linspace(0.5, 20.0, H * W).reshape(H, W).astype(np.float16)
    arrays = {"rgb": np.full((3, H, W), 7, np.uint8), "depth": depth, "depth_confidence": np.ones_like(depth)}
    store.write_panorama(1, arrays, _row(_entries(2)[1]))
    files = [p for p in (tmp_path / "store" / "depth" / "c").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "store" / "depth" / "c").parts[0] for p in files] == ["1"]
    assert np.array_equal(store.group["depth"][1, H - 50 : H - 10, W - 100 :], depth[H - 50 : H - 10, W - 100 :])


def test_kept_patches_at_the_default_patch_size(tmp_path: Path) -> None:
    """518 (Depth Anything's input) is no multiple of 256: the patch arrays still get valid shards."""
    spec = _spec(keep_patches=True, patch_size=518, fov_deg=(90.0, 90.0))
    store = LabelStore.create(str(tmp_path / "store"), spec, _entries(1), {})
    assert store.group["patches/depth"].shape == (1, 2, 518, 518)
    assert store.group["patches/depth"].shards == (1, 2, 518, 518)
    patch = np.linspace(1.0, 9.0, 518 * 518, dtype=np.float32).reshape(518, 518)
    store.group["patches/depth"][0, 1] = patch
    assert np.array_equal(
        LabelStore.open(str(tmp_path / "store")).read(0, ["patches/depth"])["patches/depth"][1], patch
    )


# zarr warns that manifest.parquet and rows/ inside the group are not Zarr nodes when it lists the group.
@pytest.mark.filterwarnings("ignore:Object at .* is not recognized as a component of a Zarr hierarchy")
def test_group_is_readable_by_plain_zarr(tmp_path: Path) -> None:
    spec = _spec(depth_kind="relative_disparity")
    store = LabelStore.create(str(tmp_path / "store"), spec, _entries(2), {"mtpano_version": "9.9"})
    written = _arrays(spec, seed=5)
    written["depth"][0, :4] = np.nan  # "no label" survives the round trip
    store.write_panorama(0, written, _row(_entries(2)[0]))

    group = zarr.open_group(str(tmp_path / "store"), mode="r")
    attrs = dict(group.attrs)
    assert attrs["conventions_version"] == CONVENTIONS_VERSION
    assert attrs["depth_kind"] == "relative_disparity"
    assert attrs["class_names"] == list(CLASSES)
    assert attrs["erp_height"] == 8 and attrs["erp_width"] == 16
    assert attrs["layout"] == "icosahedron" and attrs["patch_size"] == 4
    assert attrs["mtpano_version"] == "9.9"
    assert attrs["spec"]["teachers"]["depth"]["revision"] == "abc123"
    assert attrs["spec"]["fov_deg"] == [90.0] * 4
    assert sorted(group.array_keys()) == sorted(LABEL_ARRAYS)
    assert np.array_equal(group["depth"][0], written["depth"], equal_nan=True)
    assert np.array_equal(group["semantic"][0], written["semantic"])
    assert np.array_equal(group["normals"][0], written["normals"])
    assert np.isnan(group["depth"][1]).all()


# ---------------------------------------------------------------------------------------------- commits


def test_a_panorama_is_done_only_after_commit(tmp_path: Path) -> None:
    spec = _spec()
    url = str(tmp_path / "store")
    store = LabelStore.create(url, spec, _entries(2), {})
    written = _arrays(spec, seed=1)
    store.write_arrays(0, written)
    # Every shard is there, but without its row the panorama is not done.
    assert np.array_equal(store.read(0)["semantic"], written["semantic"])
    assert [r["status"] for r in LabelStore.open(url).rows()] == ["pending", "pending"]

    store.commit(0, _row(_entries(2)[0], depth_coverage=1.0))
    row = _by_index(LabelStore.open(url))[0]
    assert (row["status"], row["error"], row["pano_id"], row["index"]) == ("ok", "", "rooms/r0", 0)
    assert row["t_decode"] == 0.25 and row["depth_coverage"] == 1.0
    assert _by_index(LabelStore.open(url))[1]["status"] == "pending"


def test_a_failed_array_write_raises_once_every_write_ended_and_commits_nothing(tmp_path: Path) -> None:
    spec = _spec()
    url = str(tmp_path / "store")
    store = LabelStore.create(url, spec, _entries(1), {})
    (tmp_path / "store" / "depth" / "c").write_text("in the way")  # depth's shard cannot be made
    written = _arrays(spec, seed=2)
    with pytest.raises(OSError):
        store.write_panorama(0, written, _row(_entries(1)[0]))
    assert [r["status"] for r in LabelStore.open(url).rows()] == ["pending"]
    # The arrays written beside it have ended, whole, before the error came out.
    others = [name for name in written if name != "depth"]
    for name, value in LabelStore.open(url).read(0, others).items():
        assert np.array_equal(value, written[name], equal_nan=True), name


def test_write_failure_records_a_failed_row(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = LabelStore.create(url, _spec(), _entries(3), {})
    store.write_failure(1, _row(_entries(3)[1]), "ImageError: truncated PNG (no IEND chunk)")
    rows = _by_index(LabelStore.open(url))
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "ImageError: truncated PNG (no IEND chunk)"
    assert rows[1]["t_decode"] == 0.25
    assert rows[0]["status"] == rows[2]["status"] == "pending"
    _assert_unwritten(store, 1)


def test_row_values_are_stored_as_plain_json(tmp_path: Path) -> None:
    store = LabelStore.create(str(tmp_path / "store"), _spec(), _entries(1), {})
    stats = {"absrel": np.float32(0.5), "residual": float("nan"), "patches": np.int64(20), "scales": np.ones(2)}
    store.commit(0, _row(_entries(1)[0], **stats))
    row_file = tmp_path / "store" / "rows" / "00000000.json"
    on_disk = json.loads(row_file.read_text())  # strict JSON: no NaN token
    assert on_disk["absrel"] == 0.5 and on_disk["residual"] is None
    assert on_disk["patches"] == 20 and on_disk["scales"] == [1.0, 1.0]
    assert on_disk["status"] == "ok" and on_disk["index"] == 0


def test_consolidate_merges_rows_into_the_manifest(tmp_path: Path) -> None:
    spec = _spec()
    url = str(tmp_path / "store")
    entries = _entries(4)
    store = LabelStore.create(url, spec, entries, {})
    # The first panorama fails (no quality figures): its row must not decide the manifest's columns.
    store.write_failure(0, _row(entries[0]), "ImageError: empty file")
    store.write_panorama(1, _arrays(spec, seed=1), _row(entries[1], depth_absrel=0.02, semantic_coverage=0.9))
    store.write_panorama(3, _arrays(spec, seed=3), _row(entries[3], depth_absrel=0.04, semantic_coverage=1.0))
    before = store.rows()
    assert len(list((tmp_path / "store" / "rows").glob("*.json"))) == 3

    store.consolidate()
    assert list((tmp_path / "store" / "rows").glob("*.json")) == []
    table = pq.read_table(tmp_path / "store" / "manifest.parquet")
    assert table.num_rows == 4
    assert table.column_names[:5] == ["pano_id", "index", "source", "status", "error"]
    assert {"t_decode", "depth_absrel", "semantic_coverage"} <= set(table.column_names)
    columns = table.to_pydict()
    assert columns["index"] == [0, 1, 2, 3]
    assert columns["pano_id"] == [e.pano_id for e in entries]
    assert columns["source"] == [e.source for e in entries]
    assert columns["status"] == ["failed", "ok", "pending", "ok"]
    assert columns["error"] == ["ImageError: empty file", "", "", ""]
    assert columns["depth_absrel"] == [None, 0.02, None, 0.04]
    assert columns["t_decode"] == [0.25, 0.25, None, 0.25]

    # Nothing was lost: the consolidated rows are the rows before, with None for absent figures.
    after = LabelStore.open(url).rows()
    for old, new in zip(before, after, strict=True):
        assert {k: v for k, v in new.items() if v is not None or k in old} == old
    assert LabelStore.open(url).manifest().to_pydict() == columns
    store.consolidate()  # no row files: nothing changes
    assert pq.read_table(tmp_path / "store" / "manifest.parquet").to_pydict() == columns


def test_half_written_row_files_are_ignored(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    entries = _entries(3)
    store = LabelStore.create(url, _spec(), entries, {})
    store.commit(0, _row(entries[0]))
    rows_dir = tmp_path / "store" / "rows"
    complete = json.dumps({**_row(entries[1]), "index": 1, "status": "ok", "error": ""})
    (rows_dir / "00000001.json").write_text(complete[: len(complete) // 2])  # killed mid-write
    (rows_dir / "00000002.json.tmp").write_text(complete.replace('"index": 1', '"index": 2'))  # never moved

    assert [r["status"] for r in LabelStore.open(url).rows()] == ["ok", "pending", "pending"]
    store.consolidate()
    assert pq.read_table(tmp_path / "store" / "manifest.parquet").column("status").to_pylist() == [
        "ok",
        "pending",
        "pending",
    ]
    # The redone panorama's commit replaces the broken file.
    store.commit(1, _row(entries[1]))
    assert [r["status"] for r in LabelStore.open(url).rows()] == ["ok", "ok", "pending"]


# ---------------------------------------------------------------------------------------------- growing


def test_add_panoramas_grows_every_array_and_keeps_data(tmp_path: Path) -> None:
    spec = _spec(keep_patches=True)
    url = str(tmp_path / "store")
    store = LabelStore.create(url, spec, _entries(2), {})
    first = _arrays(spec, seed=10)
    store.write_panorama(0, first, _row(_entries(2)[0], depth_absrel=0.01))
    store.consolidate()
    second = _arrays(spec, seed=11)
    store.write_arrays(1, second)  # not committed

    store.add_panoramas(_entries(3, start=2))
    reopened = LabelStore.open(url, mode="r+")
    assert reopened.num_panoramas == 5
    for a in array_specs(spec):
        assert reopened.group[a.name].shape == (5, *a.shape), a.name
    kept = reopened.read(0)
    for name, value in first.items():
        assert np.array_equal(kept[name], value), name
    assert np.array_equal(reopened.read(1)["depth"], second["depth"])
    for index in (2, 3, 4):
        _assert_unwritten(reopened, index)
    rows = reopened.rows()
    assert [(r["index"], r["pano_id"], r["status"]) for r in rows] == [
        (0, "rooms/r0", "ok"),
        (1, "rooms/r1", "pending"),
        (2, "rooms/r2", "pending"),
        (3, "rooms/r3", "pending"),
        (4, "rooms/r4", "pending"),
    ]
    assert rows[0]["depth_absrel"] == 0.01

    third = _arrays(spec, seed=14)
    reopened.write_panorama(4, third, _row(_entries(5)[4]))
    assert np.array_equal(LabelStore.open(url).read(4, ["patches/depth"])["patches/depth"], third["patches/depth"])
    # The store that grew writes into the new indices too (it reopens its arrays at their new shape).
    fourth = _arrays(spec, seed=15)
    store.write_panorama(3, fourth, _row(_entries(5)[3]))
    assert np.array_equal(LabelStore.open(url).read(3, ["depth"])["depth"], fourth["depth"])


def test_add_panoramas_checks_indices(tmp_path: Path) -> None:
    store = LabelStore.create(str(tmp_path / "store"), _spec(), _entries(2), {})
    with pytest.raises(StoreError, match="indices 2"):
        store.add_panoramas(_entries(2, start=3))
    assert store.group["depth"].shape[0] == 2 and len(store.rows()) == 2


def test_add_panoramas_to_an_empty_store(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    store = LabelStore.create(url, _spec(), [], {})
    assert store.num_panoramas == 0 and store.rows() == []
    store.add_panoramas(_entries(2))
    assert [r["pano_id"] for r in LabelStore.open(url).rows()] == ["rooms/r0", "rooms/r1"]
    assert store.group["normals"].shape == (2, 3, 8, 16)


# ---------------------------------------------------------------------------------------------- specs


def test_spec_json_round_trip_and_differences(tmp_path: Path) -> None:
    spec = _spec(keep_patches=True)
    as_json = json.loads(json.dumps(spec.to_json()))
    assert as_json["tasks"] == ["depth", "semantic", "normals"] and as_json["fov_deg"] == [90.0] * 4
    assert StoreSpec.from_json(as_json) == spec
    assert spec.differences(StoreSpec.from_json(as_json)) == []

    other = _spec(keep_patches=True, erp_height=16, layout="cube")
    assert spec.differences(other) == ["erp_height", "layout"]
    revised = {**spec.teachers, "depth": {"spec": "hf:depth-anything", "revision": "def456"}}
    assert spec.differences(_spec(keep_patches=True, teachers=revised)) == ["teachers"]
    assert spec.differences(_spec(fusion={"border_falloff": 0.5, "align": True})) == ["keep_patches", "fusion"]

    url = str(tmp_path / "store")
    LabelStore.create(url, spec, _entries(1), {})
    assert LabelStore.open(url).spec == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": ("depth", "edges")}, re.escape("unknown tasks ['edges']")),
        ({"depth_kind": None}, "depth_kind must be given exactly when depth is a task"),
        ({"tasks": ("semantic",)}, "depth_kind must be given exactly when depth is a task"),
        ({"depth_kind": "metric_zdepth"}, "depth_kind must be one of"),
        ({"class_names": ()}, "1 to 255 class names, got 0"),
        ({"class_names": tuple(f"c{i}" for i in range(256))}, "1 to 255 class names, got 256"),
    ],
)
def test_invalid_specs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        _spec(**changes)


def test_255_classes_fit_beside_the_ignore_id() -> None:
    spec = _spec(class_names=tuple(f"c{i}" for i in range(255)))
    assert len(spec.class_names) == 255


def test_write_arrays_checks_names_and_shapes(tmp_path: Path) -> None:
    spec = _spec()
    url = str(tmp_path / "store")
    store = LabelStore.create(url, spec, _entries(1), {})
    arrays = _arrays(spec, seed=0)

    missing = {k: v for k, v in arrays.items() if k != "depth_confidence"}
    with pytest.raises(StoreError, match=re.escape("missing ['depth_confidence']")):
        store.write_arrays(0, missing)
    with pytest.raises(StoreError, match=re.escape("not in the store ['edges']")):
        store.write_arrays(0, {**arrays, "edges": np.zeros((8, 16), np.uint8)})
    _assert_unwritten(store, 0)  # refused before anything was written

    with pytest.raises(StoreError, match=r"^normals: expected shape \(3, 8, 16\), got \(8, 16, 3\)$"):
        store.write_arrays(0, {**arrays, "normals": np.zeros((8, 16, 3), np.float16)})
    with pytest.raises(StoreError, match=r"^semantic: expected shape"):
        store.write_panorama(0, {**arrays, "semantic": np.zeros((1, 8, 16), np.uint8)}, _row(_entries(1)[0]))
    assert [r["status"] for r in LabelStore.open(url).rows()] == ["pending"]


# ---------------------------------------------------------------------------------------------- create / open


def test_create_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(StoreError, match="exists and is not a label store"):
        LabelStore.create(str(target), _spec(), _entries(1), {})
    assert [p.name for p in target.iterdir()] == ["holiday.jpg"]
    assert (target / "holiday.jpg").read_bytes() == b"precious"

    # Other Zarr data is not a label store either.
    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    other.create_array("x", shape=(4,), dtype="int32")[:] = np.arange(4)
    with pytest.raises(StoreError, match="not a label store"):
        LabelStore.create(str(tmp_path / "other.zarr"), _spec(), _entries(1), {})
    assert np.array_equal(zarr.open_group(str(tmp_path / "other.zarr"), mode="r")["x"][:], np.arange(4))

    (tmp_path / "file").write_text("keep me")
    with pytest.raises(StoreError, match="not a label store"):
        LabelStore.create(str(tmp_path / "file"), _spec(), _entries(1), {})
    assert (tmp_path / "file").read_text() == "keep me"

    (tmp_path / "empty").mkdir()
    assert LabelStore.create(str(tmp_path / "empty"), _spec(), _entries(1), {}).num_panoramas == 1


def test_create_replaces_an_existing_store(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    old_spec = _spec()
    old = LabelStore.create(url, old_spec, _entries(3), {})
    old.write_panorama(0, _arrays(old_spec, seed=0), _row(_entries(3)[0]))
    old.write_failure(1, _row(_entries(3)[1]), "boom")

    new_spec = _spec(erp_height=4, tasks=("depth",), class_names=())
    LabelStore.create(url, new_spec, [PanoramaEntry("other", 0, "/elsewhere/other.jpg")], {})
    store = LabelStore.open(url)
    assert store.spec == new_spec and store.num_panoramas == 1
    assert [(r["pano_id"], r["status"]) for r in store.rows()] == [("other", "pending")]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "depth",
        "depth_confidence",
        "manifest.parquet",
        "rgb",
        "zarr.json",
    ]
    assert np.isnan(store.read(0)["depth"]).all() and store.read(0)["depth"].shape == (4, 8)


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a label store"):
        LabelStore.open(str(tmp_path / "nothing"))
    assert not LabelStore.exists(str(tmp_path / "nothing"))
    url = str(tmp_path / "store")
    LabelStore.create(url, _spec(), _entries(1), {})
    group = zarr.open_group(url, mode="r+")
    group.attrs["store_format_version"] = 99
    with pytest.raises(StoreError, match="store format 99"):
        LabelStore.open(url)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_fsspec_urls(tmp_path: Path, scheme: str) -> None:
    url = f"file://{tmp_path}/nested/store" if scheme == "file" else f"memory://{tmp_path.name}/store"
    spec = _spec()
    entries = _entries(2)
    assert not LabelStore.exists(url)
    store = LabelStore.create(url, spec, entries, {})
    try:
        assert LabelStore.exists(url)
        written = _arrays(spec, seed=7)
        store.write_panorama(1, written, _row(entries[1], depth_absrel=0.03))
        store.write_failure(0, _row(entries[0]), "ImageError: empty file")
        store.consolidate()

        reopened = LabelStore.open(url)
        assert reopened.spec == spec
        data = reopened.read(1)
        for name, value in written.items():
            assert np.array_equal(data[name], value), name
        assert [(r["status"], r["error"]) for r in reopened.rows()] == [
            ("failed", "ImageError: empty file"),
            ("ok", ""),
        ]
        fs, root = fsspec.core.url_to_fs(url)
        assert fs.exists(f"{root}/manifest.parquet") and fs.glob(f"{root}/rows/*.json") == []
        if scheme == "file":
            assert (tmp_path / "nested" / "store" / "zarr.json").is_file()
            assert zarr.open_group(str(tmp_path / "nested" / "store"), mode="r").attrs["depth_kind"] == "metric_range"
    finally:
        fs, root = fsspec.core.url_to_fs(url)
        fs.rm(root, recursive=True)
