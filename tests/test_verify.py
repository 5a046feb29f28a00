"""`mtpano verify` on a real store, clean and damaged on purpose (each damage on its own copy)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from quality_stores import label, make_rooms, mtpano_here

from storage.labelstore import MANIFEST, LabelStore
from storage.verify import verify_store

SEEDS = [7, 8]


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    store = label(make_rooms(root, SEEDS), root / "store")
    return store.url, {r["index"]: r["pano_id"] for r in store.rows()}


@pytest.fixture
def copy(clean_store, tmp_path):
    url, ids = clean_store
    shutil.copytree(url, tmp_path / "store")
    return tmp_path / "store", ids


def test_clean_store_passes(clean_store):
    url, _ = clean_store
    out = mtpano_here("verify", url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "" and "clean (2 panoramas: 2 ok, 0 failed, 0 pending; 2 ok rows read)" in out.stderr


def test_a_deleted_shard_is_found(copy):
    path, ids = copy
    (path / "normals" / "c" / "1" / "0" / "0" / "0").unlink()
    out = mtpano_here("verify", path)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [f"{ids[1]} (index 1): normals: shard normals/c/1/0/0/0 is missing"]
    assert "1 problems in 1 panoramas" in out.stderr


def test_nan_normals_in_an_ok_row_are_found(copy):
    path, ids = copy
    normals = zarr.open_array(str(path / "normals"), mode="r+")
    damaged = normals[0]
    damaged[:, 10:20, 30:50] = np.nan  # 200 pixels whose confidence still claims a label
    normals[0] = damaged
    out = mtpano_here("verify", path)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert f"{ids[0]} (index 0): normals: 200 pixels NaN where normals_confidence > 0 claims a label" in lines
    assert f"{ids[0]} (index 0): normals: the manifest records coverage 1.0000, the arrays hold 0.9756" in lines
    assert all(line.startswith(f"{ids[0]} (index 0)") for line in lines)


def test_a_manifest_row_past_the_end_is_found(copy):
    path, ids = copy
    table = pq.read_table(path / MANIFEST)
    index = table.column("index").to_pylist()
    index[1] = 5
    pq.write_table(table.set_column(table.schema.get_field_index("index"), "index", [index]), path / MANIFEST)
    out = mtpano_here("verify", path)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert f"{ids[1]} (index 5): row points past the end of the arrays (2 panoramas)" in lines
    assert "store: no manifest row for array indices 1" in lines


def test_bad_values_are_found(copy):
    """Value checks the CLI tests above do not reach: unit length, class ids, confidence range."""
    path, ids = copy
    group = zarr.open_group(str(path), mode="r+")
    normals = group["normals"][1]
    normals[:, 0, :5] *= 2.0
    group["normals"][1] = normals
    semantic = group["semantic"][1]
    semantic[5, :3] = 200
    group["semantic"][1] = semantic
    conf = group["depth_confidence"][0]
    conf[0, 0] = 1.5
    group["depth_confidence"][0] = conf
    result = verify_store(str(path))
    messages = sorted(str(p) for p in result.problems)
    assert messages == [
        f"{ids[0]} (index 0): depth_confidence: 1 pixel not finite or outside [0, 1]",
        f"{ids[1]} (index 1): normals: 5 pixels not unit length (worst |n| = 2)",
        f"{ids[1]} (index 1): semantic: 3 pixels with class ids [200] beyond the 150 classes",
    ]
    assert result.bad_panoramas == 2 and LabelStore.open(str(path)).num_panoramas == 2


def test_an_all_black_panorama_verifies_clean(tmp_path):
    """Shards equal to their fill value (black RGB) are still written, so they are not 'missing'."""
    images = make_rooms(tmp_path, [9])
    (image,) = sorted(images.iterdir())
    cv2.imwrite(str(image), np.zeros_like(cv2.imread(str(image))))
    store = label(images, tmp_path / "store")
    assert (tmp_path / "store" / "rgb" / "c" / "0" / "0" / "0" / "0").is_file()
    assert not store.read(0, ["rgb"])["rgb"].any()
    report = verify_store(store.url)
    assert report.problems == [], report.problems
