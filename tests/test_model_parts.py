"""BridgeNet's parts: config and presets, ERP geometry, padding, resizing, the token mixer, the
DINOv2 encoder (checked against transformers' own backbones) and pretrained loading."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Dinov2Backbone,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from model import PRESETS, BridgeNet, BridgeNetConfig
from model.blocks import ErpConv2d, ErpTokenMixer, resize_erp
from model.encoder import DinoEncoder
from model.geometry import ErpGeometry
from spherical.erp import erp_lonlat, erp_rays
from trainer.checkpoint import load_model, save_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: handing them between threads costs more than it saves."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Config -----------------------------------------------------------------------------------


# Encoder parameters of the published DINOv2 checkpoints (facebook/dinov2-{small,base,large}).
DINOV2_PARAMS = {"small": 22.1e6, "base": 86.6e6, "large": 304.4e6}


@pytest.mark.parametrize("preset", ["small", "base", "large"])
def test_presets_match_dinov2_sizes(preset):
    with torch.device("meta"):
        model = BridgeNet(BridgeNetConfig.from_preset(preset))
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert encoder == pytest.approx(DINOV2_PARAMS[preset], rel=2e-3)
    # The panoramic neck is an addition, not a second encoder.
    neck = sum(p.numel() for p in model.neck.parameters())
    assert 0 < neck < 0.3 * encoder


def test_presets_overrides_and_json_round_trip():
    assert set(PRESETS) == {"tiny", "small", "base", "large"}
    config = BridgeNetConfig.from_preset("base", num_classes=40, tasks=["depth", "normals"], padding="zeros")
    assert (config.hidden_size, config.num_classes, config.padding) == (768, 40, "zeros")
    assert config.tasks == ("depth", "normals")  # a tuple, whatever sequence was given
    assert BridgeNetConfig.from_preset("small") == BridgeNetConfig()
    assert BridgeNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        BridgeNetConfig.from_preset("huge")
    with pytest.raises(TypeError, match="no field"):
        BridgeNetConfig.from_preset("tiny", hidden=3)
    with pytest.raises(ValueError, match="missing field"):
        BridgeNetConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "tasks"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": ("depth",)}, "dual_groups=True needs"),
        ({"dual_groups": False}, "gradient_truncation=True needs"),
        ({"use_bridge": False}, "gradient_truncation=True needs"),
        (
            {"use_grouping": False, "use_bridge": False, "gradient_truncation": False, "dual_groups": False},
            "geometry_modulation=True needs",
        ),
        ({"tasks": ("depth", "albedo")}, "tasks must be"),
        ({"tasks": ()}, "tasks must be"),
        ({"encoder_layers": (0, 2, 1, 3)}, "encoder_layers"),
        ({"encoder_layers": (0, 1, 2, 4)}, "encoder_layers"),
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"padding": "reflect"}, "padding"),
        ({"wide_kernel": 8}, "wide_kernel"),
    ],
)
def test_inconsistent_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        BridgeNetConfig.from_preset("tiny", **overrides)


def test_baseline_is_the_plain_encoder_and_decoders():
    baseline = BridgeNetConfig.from_preset("tiny").baseline()
    model = BridgeNet(baseline)
    assert model.neck is None and baseline.aux_task_names == () and baseline.padding == "zeros"
    assert set(model.decoders) == {"depth", "semantic", "normals"}


# --- Geometry ---------------------------------------------------------------------------------


def test_geometry_code_comes_from_spherical_and_is_cached_per_resolution():
    geometry = ErpGeometry()
    code, pole = geometry(torch.zeros(2, 4, 6, 12))
    lon, lat = erp_lonlat(6)
    rays = erp_rays(6)  # (6,12,3)
    assert code.shape == (1, 5, 6, 12) and pole.shape == (1, 1, 6, 1)
    torch.testing.assert_close(code[0, :3], rays.permute(2, 0, 1))  # (3,6,12)
    torch.testing.assert_close(code[0, 3], (lon / math.pi).expand(6, -1))
    torch.testing.assert_close(code[0, 4], (2 * lat / math.pi)[:, None].expand(-1, 12))
    torch.testing.assert_close(pole.flatten(), torch.sin(lat).abs())
    assert geometry(torch.zeros(1, 1, 6, 12)).code is code  # cached
    assert geometry(torch.zeros(1, 1, 3, 6)).code.shape == (1, 5, 3, 6)  # rebuilt
    assert geometry(torch.zeros(1, 1, 3, 6, dtype=torch.float64)).code.dtype == torch.float64
    assert "code" not in geometry.state_dict()  # derived, not saved
    with pytest.raises(ValueError, match="h x 2h"):
        geometry(torch.zeros(1, 1, 3, 5))


# --- Padding, resizing, mixing ----------------------------------------------------------------


def test_erp_conv_wraps_longitude_and_zero_pads_latitude():
    x = torch.randn(1, 2, 5, 10, generator=generator())
    conv = ErpConv2d(2, 3, (3, 5), padding="circular")
    tiled = torch.cat((x[..., -2:], x, x[..., :2]), dim=-1)  # longitude continues past both edges
    reference = F.conv2d(F.pad(tiled, (0, 0, 1, 1)), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), reference)
    zeros = ErpConv2d(2, 3, (3, 5), padding="zeros")
    zeros.load_state_dict(conv.state_dict())
    torch.testing.assert_close(zeros(x), F.conv2d(x, conv.weight, conv.bias, padding=(1, 2)))
    strided = ErpConv2d(2, 3, 3, padding="circular", stride=2)
    assert strided(x).shape == (1, 3, 3, 5)


@pytest.mark.parametrize("size", [(8, 16), (6, 12), (3, 6), (5, 12)], ids=["2x", "1.5x", "0.75x", "uneven"])
def test_circular_resize_interpolates_across_the_seam(size):
    x = torch.randn(2, 3, 4, 8, generator=generator())
    out = resize_erp(x, size, "circular")
    plain = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_erp(x, size, "zeros"), plain)
    # Away from the first and last column both agree; at the seam circular reads across it.
    torch.testing.assert_close(out[..., 1:-1], plain[..., 1:-1])
    tiled = torch.cat((x, x, x), dim=-1)  # three turns: the middle one has true neighbours
    wide = F.interpolate(tiled, size=(size[0], 3 * size[1]), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, wide[..., size[1] : 2 * size[1]])
    if size[1] % 2 == 0:  # half-turn rolls commute with the resize
        rolled = resize_erp(torch.roll(x, 4, dims=-1), size, "circular")
        torch.testing.assert_close(rolled, torch.roll(out, size[1] // 2, dims=-1))


def test_token_mixer_blends_dense_and_wide_convolutions_by_latitude():
    h = 8
    x = torch.randn(1, 4, h, 2 * h, generator=generator())
    mixer = ErpTokenMixer(4, erp_mixer=True, wide_kernel=9, padding="circular")
    pole_weight = erp_rays(h)[:, 0, 1].abs().view(1, 1, h, 1)  # |ray_y| per row
    out = mixer(x, pole_weight)
    dense, wide = mixer.dense(x), mixer.wide(x)
    assert mixer.wide.weight.shape == (4, 1, 3, 9)  # depthwise, 3 x 9
    for row in (0, h // 2, h - 1):
        a = float(pole_weight[0, 0, row, 0])
        torch.testing.assert_close(out[..., row, :], (1 - a) * dense[..., row, :] + a * wide[..., row, :])
    assert float(pole_weight[0, 0, 0, 0]) > 0.95 > 0.2 > float(pole_weight[0, 0, h // 2, 0])
    plain = ErpTokenMixer(4, erp_mixer=False, wide_kernel=9, padding="circular")
    assert plain.wide is None
    torch.testing.assert_close(plain(x, pole_weight), plain.dense(x))


# --- Encoder ----------------------------------------------------------------------------------

TINY_SIZES = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "patch_size": 14, "image_size": 56}


@pytest.mark.parametrize("registers", [0, 4], ids=["dinov2", "dinov2-registers"])
def test_encoder_token_maps_match_transformers_backbone(registers):
    """Our maps (prefix tokens dropped, non-square grid) equal the feature maps of transformers'
    own Dinov2Backbone / Dinov2WithRegistersBackbone carrying the same weights."""
    config = BridgeNetConfig.from_preset(
        "tiny", num_register_tokens=registers, num_layers=6, encoder_layers=(0, 2, 3, 5)
    )
    sizes = {**TINY_SIZES, "num_hidden_layers": 6}
    torch.manual_seed(0)
    encoder = DinoEncoder(config).eval()
    assert encoder.num_prefix_tokens == 1 + registers
    out_indices = [layer + 1 for layer in config.encoder_layers]  # stage 0 is the embeddings
    if registers:
        backbone_config = Dinov2WithRegistersConfig(**sizes, num_register_tokens=registers, out_indices=out_indices)
        reference = Dinov2WithRegistersBackbone(backbone_config).eval()
    else:
        reference = Dinov2Backbone(Dinov2Config(**sizes, out_indices=out_indices)).eval()
    reference.load_state_dict(encoder.backbone.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 28, 56, generator=generator())
    with torch.no_grad():
        ours = encoder(pixels)
        theirs = reference(pixels).feature_maps
    assert [tuple(m.shape) for m in ours] == [(2, 32, 2, 4)] * 4
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_encoder_loads_a_pretrained_checkpoint(tmp_path):
    torch.manual_seed(1)
    pretrained = Dinov2Model(Dinov2Config(**TINY_SIZES))
    pretrained.save_pretrained(tmp_path / "dinov2")
    config = BridgeNetConfig.from_preset("tiny", encoder_checkpoint=str(tmp_path / "dinov2"))
    model = BridgeNet(config)
    expected = pretrained.state_dict()
    loaded = model.encoder.backbone.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 28, 56))["depth"].shape == (1, 1, 28, 56)

    # A saved BridgeNet carries the encoder weights: loading it does not need the checkpoint.
    save_model(model, tmp_path / "bridgenet")
    (tmp_path / "dinov2" / "model.safetensors").unlink()
    reloaded, _ = load_model(tmp_path / "bridgenet")
    assert torch.equal(
        reloaded.encoder.backbone.embeddings.position_embeddings, pretrained.embeddings.position_embeddings
    )


def test_encoder_loads_a_registers_checkpoint(tmp_path):
    torch.manual_seed(2)
    pretrained = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY_SIZES, num_register_tokens=4))
    pretrained.save_pretrained(tmp_path)
    model = BridgeNet(BridgeNetConfig.from_preset("tiny", num_register_tokens=4, encoder_checkpoint=str(tmp_path)))
    assert isinstance(model.encoder.backbone, Dinov2WithRegistersModel)
    assert model.encoder.num_prefix_tokens == 5
    assert torch.equal(model.encoder.backbone.embeddings.register_tokens, pretrained.embeddings.register_tokens)
    with pytest.raises(ValueError, match="'dinov2_with_registers' model"):
        BridgeNet(BridgeNetConfig.from_preset("tiny", encoder_checkpoint=str(tmp_path)))


def test_mismatched_or_missing_checkpoints_are_rejected(tmp_path):
    Dinov2Model(Dinov2Config(**{**TINY_SIZES, "hidden_size": 48})).save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden_size"):
        BridgeNet(BridgeNetConfig.from_preset("tiny", encoder_checkpoint=str(tmp_path / "wide")))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        BridgeNet(BridgeNetConfig.from_preset("tiny", encoder_checkpoint=str(tmp_path / "nowhere")))
