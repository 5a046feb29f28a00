"""Hugging Face teachers on tiny random models of the real classes, loaded through `hf:`.

The builders (`save_tiny_depth_anything`, `save_tiny_mask2former`) save randomly initialised
models with `save_pretrained(..., safe_serialization=True)` and a preprocessor config, as a
downloaded checkpoint would look; other tests can import them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny_models import IMAGENET_MEAN, save_tiny_depth_anything, save_tiny_marigold, save_tiny_mask2former

from pipeline.teachers.base import METRIC_ZDEPTH, RELATIVE_DISPARITY, TeacherCameras, TeacherError
from pipeline.teachers.hf_common import read_preprocess_config, resolve_hf_source
from pipeline.teachers.hf_semantic import semantic_probabilities
from pipeline.teachers.registry import load_teacher, resolve
from spherical.ade20k import ADE20K_CLASSES
from spherical.camera import PatchCameras


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {
        "relative": save_tiny_depth_anything(root / "da_relative", metric=False),
        "metric": save_tiny_depth_anything(root / "da_metric", metric=True),
        "semantic": save_tiny_mask2former(root / "m2f"),
    }


def patch_batch(n: int, height: int, width: int) -> tuple[torch.Tensor, TeacherCameras]:
    cams = PatchCameras.from_ypr(torch.linspace(-90, 90, n), 0.0, fov_x_deg=80.0, height=height, width=width)
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(1))
    return images, TeacherCameras.from_cameras(cams, [f"room_{i:05d}" for i in range(n)])


def test_depth_anything_relative(model_dirs) -> None:
    resolved = resolve(f"hf:{model_dirs['relative']}", "depth")
    assert resolved.depth_kind == RELATIVE_DISPARITY
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", resolved.info["revision"])
    teacher = load_teacher(resolved, "cpu")
    assert teacher.depth_kind == RELATIVE_DISPARITY
    images, cameras = patch_batch(3, 48, 48)
    disparity = teacher.predict(images, cameras)
    # Square patches go to the processor's 56x56 (a multiple of 14).
    assert disparity.shape == (3, 56, 56)
    assert disparity.dtype == torch.float32
    assert bool(torch.isfinite(disparity).all())
    info = teacher.describe()
    assert info["revision"] == resolved.info["revision"]
    assert info["model_id"] == str(model_dirs["relative"])
    assert info["input_size"] == [56, 56]


def test_depth_anything_metric_keeps_the_aspect_ratio(model_dirs) -> None:
    resolved = resolve(f"hf:{model_dirs['metric']}", "depth")
    assert resolved.depth_kind == METRIC_ZDEPTH
    teacher = load_teacher(resolved, "cpu")
    images, cameras = patch_batch(2, 48, 64)
    depth = teacher.predict(images, cameras)
    # DPT resizing: the scale closer to 1 (56/64) for both sides, then multiples of 14.
    assert depth.shape == (2, 42, 56)
    assert depth.dtype == torch.float32
    assert bool((depth > 0).all()) and bool(torch.isfinite(depth).all())
    # The metric head is a sigmoid times max_depth.
    assert float(depth.max()) <= 20.0


def test_mask2former_semantic_probabilities(model_dirs) -> None:
    resolved = resolve(f"hf:{model_dirs['semantic']}", "semantic")
    assert resolved.class_names == ADE20K_CLASSES  # id order, whitespace stripped
    teacher = load_teacher(resolved, "cpu")
    assert teacher.class_names == ADE20K_CLASSES
    images, cameras = patch_batch(2, 48, 48)
    probs = teacher.predict(images, cameras)
    # Short side 64 (a multiple of 32), masks at a quarter of it.
    assert probs.shape == (2, 150, 16, 16)
    assert probs.dtype == torch.float32
    assert bool((probs >= 0).all())
    assert torch.allclose(probs.sum(1), torch.ones(2, 16, 16), atol=1e-5)
    assert teacher.describe()["num_classes"] == 150
    assert teacher.describe()["revision"].startswith("sha256:")


def test_semantic_probabilities_by_hand() -> None:
    # Two queries over C = 2 classes (+ no object) on two pixels.
    class_logits = torch.log(torch.tensor([[[0.6, 0.2, 0.2], [0.1, 0.5, 0.4]]]))  # (1,2,3)
    masks = torch.tensor([0.8, 0.5]).logit().view(1, 2, 1, 1).expand(1, 2, 1, 2).clone()  # (1,2,1,2)
    masks[0, :, 0, 1] = -torch.inf  # no query covers the second pixel
    probs = semantic_probabilities(class_logits, masks)
    mass = torch.tensor([0.6 * 0.8 + 0.1 * 0.5, 0.2 * 0.8 + 0.5 * 0.5])
    assert torch.allclose(probs[0, :, 0, 0], mass / mass.sum())
    assert torch.allclose(probs[0, :, 0, 1], torch.tensor([0.5, 0.5]))


def test_preprocess_config_reading(tmp_path: Path) -> None:
    default = read_preprocess_config(tmp_path, default_multiple=14)
    assert default.mean == pytest.approx(IMAGENET_MEAN) and default.multiple == 14 and default.size is None
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [127.5] * 3, "image_std": [127.5] * 3, "size_divisor": 32, "size": 512})
    )
    cfg = read_preprocess_config(tmp_path, default_multiple=14)
    assert cfg.mean == pytest.approx([0.5] * 3) and cfg.std == pytest.approx([0.5] * 3)
    assert (cfg.multiple, cfg.size) == (32, 512)


def test_missing_model_offline_gives_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = "depth-anything/Depth-Anything-V2-Large-hf"
    with pytest.raises(TeacherError) as err:
        resolve(f"hf:{model}", "depth")
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"depth teacher hf:{model}: weights not found locally and the model hub is unreachable; download the "
        f"model where the hub is reachable (hf download {model} --local-dir DIR) and pass --depth-teacher hf:DIR"
    )
    with pytest.raises(TeacherError, match=r"hf download owner/model --revision refs/pr/2 --local-dir DIR"):
        resolve("hf:owner/model@refs/pr/2", "semantic")
    # Without diffusers the line says how to install it; with it, how to use a local directory.
    with pytest.raises(TeacherError, match=r"^normals teacher hf:prs-eth/marigold-normals-v1-1: .*--normal-teacher"):
        resolve("quality", "normals")


def test_cached_hub_snapshot_is_used_offline(model_dirs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The layout `hf download` leaves in the cache: refs/main -> snapshots/<commit>/...
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--mtpano-test--tiny-depth"
    shutil.copytree(model_dirs["metric"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_hf_source("mtpano-test/tiny-depth", "depth")
    assert (source.model_id, source.revision) == ("mtpano-test/tiny-depth", commit)
    resolved = resolve("hf:mtpano-test/tiny-depth", "depth")
    assert resolved.info["revision"] == commit and resolved.info["model_id"] == "mtpano-test/tiny-depth"
    images, cameras = patch_batch(1, 28, 28)
    assert load_teacher(resolved, "cpu").predict(images, cameras).shape == (1, 56, 56)


def test_directory_without_safetensors_is_refused(model_dirs, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(model_dirs["metric"] / "config.json", pickled / "config.json")
    torch.save({"weight": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(TeacherError, match=r"^depth teacher hf:.*pickled: .* has no \*\.safetensors weights"):
        resolve(f"hf:{pickled}", "depth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherError, match=r"has no config\.json"):
        resolve(f"hf:{empty}", "depth")
    with pytest.raises(TeacherError, match="no such directory"):
        resolve(f"hf:{tmp_path}/missing/model", "depth")


def test_wrong_architecture_is_refused(model_dirs) -> None:
    with pytest.raises(TeacherError, match="describes a 'depth_anything' model; this teacher needs Mask2Former"):
        resolve(f"hf:{model_dirs['metric']}", "semantic")
    with pytest.raises(TeacherError, match="describes a 'mask2former' model; this teacher needs Depth Anything"):
        resolve(f"hf:{model_dirs['semantic']}", "depth")


def test_revision_fingerprint_follows_the_weights(model_dirs, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dirs["relative"], tmp_path / "copy")
    first = resolve_hf_source(str(copy), "depth").revision
    assert first == resolve_hf_source(str(model_dirs["relative"]), "depth").revision
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert resolve_hf_source(str(copy), "depth").revision != first


def test_marigold_frame_conversion_matches_rendered_normals() -> None:
    from pipeline.teachers.marigold import marigold_to_camera
    from synthetic.render import render_patches
    from synthetic.scene import generate_scene

    cams = PatchCameras.from_ypr([0.0, 45.0, 150.0], [0.0, -30.0, 20.0], fov_x_deg=120.0, height=32, width=32)
    truth = render_patches(generate_scene(4), cams)
    world = torch.einsum("nab,nbhw->nahw", cams.rotation, truth.normals)  # (B,3,h,w) world normals
    # Marigold's frame as diffusers documents it: x to the right, y to the top, z facing the
    # observer. In world terms those axes are R e_x, -R e_y and -R e_z.
    right, top, to_viewer = cams.rotation[:, :, 0], -cams.rotation[:, :, 1], -cams.rotation[:, :, 2]  # (B,3)
    marigold = torch.stack(
        [torch.einsum("nc,nchw->nhw", axis, world) for axis in (right, top, to_viewer)], 1
    )  # (B,3,h,w)
    converted = marigold_to_camera(marigold)
    assert torch.allclose(converted, truth.normals, atol=1e-5)
    # A floor seen level is "up" (+y) for Marigold, -y for us; a wall faced head-on is +z / -z.
    floor = truth.instance[0] == 4
    wall = truth.instance[0] == 3
    assert bool(floor.any()) and bool(wall.any())
    assert torch.allclose(marigold[0][:, floor].mean(1), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(converted[0][:, wall].mean(1), torch.tensor([0.0, 0.0, -1.0]), atol=1e-5)
    assert torch.allclose(marigold_to_camera(converted), marigold)  # a half turn is its own inverse


def test_tiny_marigold_through_hf_directory(tmp_path: Path) -> None:
    from pipeline.teachers.marigold import MarigoldConfig, MarigoldNormalsTeacher

    directory = save_tiny_marigold(tmp_path / "marigold")
    resolved = resolve(f"hf:{directory}", "normals")
    assert resolved.info["architecture"] == "MarigoldNormalsPipeline"
    assert resolved.info["revision"].startswith("sha256:")
    assert resolved.info["processing_resolution"] == 32 and resolved.info["num_inference_steps"] == 2
    teacher = load_teacher(resolved, "cpu")
    images, cameras = patch_batch(3, 48, 48)
    normals = teacher.predict(images, cameras)
    assert normals.shape == (3, 3, 32, 32) and normals.dtype == torch.float32
    assert torch.allclose(torch.linalg.vector_norm(normals, dim=1), torch.ones(1), atol=1e-4)
    # Noise is seeded per patch: the same patch gives the same normals in any batch.
    assert torch.equal(teacher.predict(images, cameras), normals)
    assert torch.allclose(teacher.predict(images[[2, 0]], cameras[[2, 0]]), normals[[2, 0]], atol=1e-5)
    ensemble = MarigoldNormalsTeacher(resolved.spec, resolved.source, "cpu", MarigoldConfig(ensemble_size=3))
    pred = ensemble.predict(images[:1], cameras[:1])
    assert pred.value.shape == (1, 3, 32, 32) and pred.confidence.shape == (1, 32, 32)
    assert bool(((pred.confidence >= 0) & (pred.confidence <= 1)).all())
    with pytest.raises(TeacherError, match=r"has no model_index\.json"):
        resolve(f"hf:{tmp_path}", "normals")
