"""Benchmark protocols and the ADE20K-150 class mappings (evaluation/protocols.py,
evaluation/data/*.csv, docs/evaluation.md)."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.classes import ADE20K_CLASSES, IGNORE_ID, NYU40_CLASSES, STANFORD2D3D_CLASSES
from evaluation.metrics import Meter
from evaluation.protocols import PROTOCOLS, get_protocol, parse_mapping, read_mapping

ADE = {name: i for i, name in enumerate(ADE20K_CLASSES)}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_ade20k_class_maps_to_a_class_or_255(name):
    protocol = get_protocol(name)
    lookup = protocol.class_lookup()
    assert lookup.shape == (256,) and lookup[IGNORE_ID] == IGNORE_ID
    targets = lookup[: len(ADE20K_CLASSES)]
    assert bool(((targets >= 0) & (targets < protocol.num_classes) | (targets == IGNORE_ID)).all())
    # The ignored list is exactly the classes mapped to 255, in id order.
    assert protocol.ignored_classes() == [ADE20K_CLASSES[i] for i in range(150) if targets[i] == IGNORE_ID]
    # Every row names its target class and says why.
    for row in protocol.mapping():
        expected = "" if row.target_id == IGNORE_ID else protocol.class_names[row.target_id]
        assert row.target_name == expected and row.basis


def test_known_pairs():
    nyu, s2d3d = get_protocol("matterport3d"), get_protocol("stanford2d3d")

    def target(protocol, ade_name: str) -> str:
        target_id = int(protocol.class_lookup()[ADE[ade_name]])
        return "" if target_id == IGNORE_ID else protocol.class_names[target_id]

    nyu_pairs = {
        "wall": "wall",
        "floor": "floor",
        "bed": "bed",
        "ceiling": "ceiling",
        "windowpane": "window",
        "chair": "chair",
        "armchair": "chair",
        "television receiver": "television",
        "refrigerator": "refrigerator",
        "bookcase": "bookshelf",
        "sky": "",
    }
    for ade_name, nyu_name in nyu_pairs.items():
        assert target(nyu, ade_name) == nyu_name, ade_name
    s2d3d_pairs = {
        "wall": "wall",
        "floor": "floor",
        "ceiling": "ceiling",
        "column": "column",
        "bulletin board": "board",
        "desk": "table",
        "sofa": "sofa",
        "lamp": "clutter",
        "road": "",
    }
    for ade_name, s2d3d_name in s2d3d_pairs.items():
        assert target(s2d3d, ade_name) == s2d3d_name, ade_name
    # NYU40 ids are the NYU40 numbers minus one; both NYU40 protocols share the table.
    assert NYU40_CLASSES[0] == "wall" and NYU40_CLASSES[39] == "otherprop"
    assert torch.equal(nyu.class_lookup(), get_protocol("structured3d").class_lookup())


def test_synth_is_ade20k_itself():
    synth = get_protocol("synth")
    assert synth.class_names == ADE20K_CLASSES and synth.ignored_classes() == []
    ids = torch.tensor([[0, 149], [255, 7]])
    assert torch.equal(synth.map_classes(ids), ids)


def test_map_classes_keeps_shape_and_255_and_refuses_other_ids():
    protocol = get_protocol("stanford2d3d")
    ids = torch.tensor([[ADE["wall"], ADE["sky"]], [IGNORE_ID, ADE["chair"]]], dtype=torch.uint8)
    mapped = protocol.map_classes(ids)
    wall, chair = STANFORD2D3D_CLASSES.index("wall"), STANFORD2D3D_CLASSES.index("chair")
    assert mapped.tolist() == [[wall, IGNORE_ID], [IGNORE_ID, chair]]
    with pytest.raises(ValueError, match="ADE20K-150"):
        protocol.map_classes(torch.tensor([150]))


def test_protocol_settings_and_metric_config():
    s2d3d = get_protocol("stanford2d3d")
    config = s2d3d.metric_config(("depth", "semantic"), align="median")
    assert (config.depth_min, config.depth_max, config.align) == (0.001, 10.0, "median")
    assert config.num_classes == 13 and config.counted_classes == tuple(range(13))
    assert s2d3d.erp_height == 512 and get_protocol("matterport3d").depth_max == 10.0
    assert math.isinf(get_protocol("structured3d").depth_max) and get_protocol("structured3d").counted_classes is None
    assert get_protocol("synth").erp_height is None
    with pytest.raises(ValueError, match="synth, stanford2d3d, matterport3d, structured3d"):
        get_protocol("kitti")


def test_ade20k_predictions_are_scored_on_benchmark_classes():
    """A wall predicted as wall is right; a wall predicted as sky (no NYU40 counterpart) is a
    miss of the wall; a floor predicted as rug (floor mat in NYU40) is wrong."""
    protocol = get_protocol("matterport3d")
    truth = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]).view(1, 2, 4)  # NYU40 wall, floor
    ade = torch.tensor([[ADE["wall"]] * 3 + [ADE["sky"]] + [ADE["floor"]] * 3 + [ADE["rug"]]]).view(1, 2, 4)
    meter = Meter(protocol.metric_config(("semantic",)))
    row = meter.update({"semantic": protocol.map_classes(ade)}, {"semantic": truth}, ["p"])[0]
    # wall: TP 3, FN 1 -> 3/4; floor: TP 3, FN 1 -> 3/4 (floor mat is not counted: not in the truth).
    assert row["semantic_pixel_accuracy"] == pytest.approx(6 / 8)
    assert row["semantic_miou"] == pytest.approx(3 / 4)


def test_mapping_files_are_checked():
    rows = read_mapping("ade20k_to_nyu40.csv", NYU40_CLASSES)
    text = "ade20k_id,ade20k_name,target_id,target_name,basis\n" + "\n".join(
        f"{r.ade20k_id},{r.ade20k_name},{r.target_id},{r.target_name},x" for r in rows
    )
    assert len(parse_mapping(text, NYU40_CLASSES)) == 150
    with pytest.raises(ValueError, match="unknown class"):
        parse_mapping(text.replace("0,wall,0,wall", "0,wall,0,floor"), NYU40_CLASSES)
    with pytest.raises(ValueError, match="id order"):
        parse_mapping(text.replace("\n3,floor,", "\n4,floor,"), NYU40_CLASSES)
