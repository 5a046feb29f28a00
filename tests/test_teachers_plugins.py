"""`py:` plugins (the documented example included), the registry, and geometric normals."""

from __future__ import annotations

import os
import pickle
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import angle_between

from pipeline.teachers.base import RELATIVE_DISPARITY, Prediction, TeacherCameras, TeacherError
from pipeline.teachers.geometric import GeometricNormalsTeacher, planarity_confidence
from pipeline.teachers.registry import PRESETS, check_teacher_set, load_teacher, parse_spec, resolve
from pipeline.teachers.sim import SimTeacher
from spherical.camera import PatchCameras
from spherical.layouts import icosahedron_layout
from synthetic.scene import generate_scene

DOC = Path(__file__).resolve().parents[1] / "docs" / "teachers.md"


def doc_example() -> tuple[str, str]:
    """(file name, code) of the plugin example in docs/teachers.md."""
    match = re.search(r"<!-- plugin-example: (\S+) -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/teachers.md lost its plugin example"
    return match.group(1), match.group(2)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A working directory for plugin modules; sys.path and imported plugins are restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def batch(n: int = 3, size: int = 32) -> tuple[torch.Tensor, TeacherCameras]:
    cams = PatchCameras.from_ypr(
        torch.linspace(-120, 120, n), torch.linspace(-40, 40, n), fov_x_deg=90.0, height=size, width=size
    )
    return torch.rand(n, 3, size, size), TeacherCameras.from_cameras(cams, [f"room_{i:05d}" for i in range(n)])


def test_documented_plugin_example_runs(plugin_dir: Path) -> None:
    name, code = doc_example()
    (plugin_dir / name).write_text(code)
    module = Path(name).stem
    depth_spec, normals_spec = f"py:{module}:sphere_depth", f"py:{module}:sphere_normals"
    resolved = resolve(depth_spec, "depth")
    assert resolved.kind == "py" and resolved.depth_kind == "metric_zdepth"
    assert resolved.info == {"model_id": "sphere", "revision": "1", "radius": 3.0, "spec": depth_spec}
    assert str(plugin_dir) in resolved.import_paths
    resolved = pickle.loads(pickle.dumps(resolved))
    teacher = load_teacher(resolved, "cpu")
    images, cameras = batch()
    depth = teacher.predict(images, cameras)
    # Range = z * ||c|| is the sphere's radius everywhere.
    assert torch.allclose(depth * cameras.ray_norms(), torch.full_like(depth, 3.0))

    normals_resolved = resolve(normals_spec, "normals")
    assert normals_resolved.info["model_id"] == f"{module}:sphere_normals"
    assert normals_resolved.info["revision"].startswith("sha256:")  # the module file's hash
    normals = load_teacher(normals_resolved, "cpu").predict(images, cameras)
    assert torch.allclose(torch.linalg.vector_norm(normals, dim=1), torch.ones(1))
    rays = cameras.camera_rays().permute(0, 3, 1, 2)  # (B,h,w,3) -> (B,3,h,w)
    assert bool(((normals * rays).sum(1) < 0).all())

    # Geometric normals of the plugin's sphere depth agree with its analytic normals.
    # One-sided differences follow chords: on a sphere each axis tilts the normal by about half
    # a pixel's angle, so the error stays within one pixel's angle.
    derived = GeometricNormalsTeacher().predict_from_depth(depth, cameras)
    angles = torch.rad2deg(angle_between(derived.value, normals, dim=1))
    pixel_angle = 90.0 / 32
    assert float(angles.max()) < pixel_angle


def test_plugin_package_is_found_by_workers_elsewhere(plugin_dir: Path, tmp_path_factory) -> None:
    package = plugin_dir / "labplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    _, code = doc_example()
    (package / "spheres.py").write_text(code)
    resolved = resolve("py:labplugins.spheres:sphere_depth", "depth")
    assert resolved.import_paths == (str(plugin_dir),)
    # A worker in another directory, with a fresh interpreter state.
    del sys.modules["labplugins.spheres"], sys.modules["labplugins"]
    sys.path.remove(str(plugin_dir))
    os.chdir(tmp_path_factory.mktemp("worker"))
    teacher = load_teacher(resolved, "cpu")
    images, cameras = batch(1)
    assert teacher.predict(images, cameras).shape == (1, 32, 32)


def test_factory_gets_the_device_when_it_asks(plugin_dir: Path) -> None:
    (plugin_dir / "devplug.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Teacher:
                task = "semantic"
                class_names = ("floor", "wall")

                def __init__(self, device):
                    self.device = torch.device(device)

                def predict(self, images, cameras):
                    b, _, h, w = images.shape
                    return torch.full((b, 2, h // 2, w // 2), 0.5, device=self.device)

            def make(device="cpu"):
                return Teacher(device)
            """
        )
    )
    resolved = resolve("py:devplug:make", "semantic")
    assert resolved.class_names == ("floor", "wall")
    teacher = load_teacher(resolved, "cpu")
    assert teacher.device == torch.device("cpu")
    assert teacher.predict(*batch(2)).shape == (2, 2, 16, 16)


BAD_PLUGINS = {
    "wrong task": (
        "class T:\n    task = 'semantic'\n    def predict(self, images, cameras): ...\ndef make(): return T()\n",
        "py:badplug:make",
        r"^depth teacher py:badplug:make: this is a semantic teacher, but it was given as --depth-teacher$",
    ),
    "no factory": ("x = 1\n", "py:badplug:make", r"module badplug has no attribute 'make'"),
    "not callable": ("make = 3\n", "py:badplug:make", r"py:badplug:make: badplug:make is not callable"),
    "factory raises": (
        "def make():\n    raise RuntimeError('no GPU here')\n",
        "py:badplug:make",
        r"the factory raised RuntimeError: no GPU here$",
    ),
    "not a teacher": ("def make(): return object()\n", "py:badplug:make", r"returned object, which is not a teacher"),
    "no predict": ("class T:\n    task = 'depth'\ndef make(): return T()\n", "py:badplug:make", r"has no predict"),
    "bad depth kind": (
        "class T:\n    task = 'depth'\n    depth_kind = 'inverse'\n    def predict(self, i, c): ...\n"
        "def make(): return T()\n",
        "py:badplug:make",
        r"depth_kind must be",
    ),
    "syntax error": ("def make(:\n", "py:badplug:make", r"cannot import badplug: SyntaxError"),
    "missing module": (None, "py:nosuchplugin:make", r"cannot import nosuchplugin: ModuleNotFoundError"),
}


@pytest.mark.parametrize("case", list(BAD_PLUGINS))
def test_bad_plugins_are_refused_in_one_line(plugin_dir: Path, case: str) -> None:
    code, spec, pattern = BAD_PLUGINS[case]
    if code is not None:
        (plugin_dir / "badplug.py").write_text(code)
    with pytest.raises(TeacherError) as err:
        resolve(spec, "depth")
    assert "\n" not in str(err.value)
    assert re.search(pattern, str(err.value)), str(err.value)


def test_spec_parsing_and_presets() -> None:
    assert parse_spec("quality", "depth").spec == "hf:depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
    assert parse_spec("quality", "semantic").body == "facebook/mask2former-swin-large-ade-semantic"
    assert parse_spec("quality", "normals").spec == "hf:prs-eth/marigold-normals-v1-1"
    assert parse_spec("fast", "normals").kind == "geometric"
    assert parse_spec("fast", "depth").preset == "fast"
    assert parse_spec("sim:noise=0.1", "depth").kind == "sim"
    assert parse_spec(" none ", "semantic").kind == "none"
    assert set(PRESETS) == {"quality", "fast", "sim"}
    assert all(set(tasks) == {"depth", "semantic", "normals"} for tasks in PRESETS.values())
    with pytest.raises(TeacherError, match="geometric is a normals teacher"):
        parse_spec("geometric", "depth")
    with pytest.raises(TeacherError, match=r"expected py:package\.module:factory"):
        parse_spec("py:just_a_module", "depth")
    with pytest.raises(TeacherError, match=r"--semantic-teacher 'deeplab': unknown teacher spec; use a preset"):
        parse_spec("deeplab", "semantic")
    assert resolve("none", "depth") is None


def test_resolve_and_load_builtin_teachers() -> None:
    depth = resolve("sim:relative=1", "depth")
    assert depth.depth_kind == RELATIVE_DISPARITY and depth.info["relative"] is True
    assert depth.info["revision"] == "sim-v1"
    assert isinstance(load_teacher(depth, "cpu"), SimTeacher)
    semantic = resolve("sim", "semantic")
    assert len(semantic.class_names) == 150
    normals = resolve("fast", "normals")
    assert normals.from_depth and normals.kind == "geometric"
    assert isinstance(load_teacher(normals, "cpu"), GeometricNormalsTeacher)
    check_teacher_set({"depth": resolve("sim", "depth"), "normals": normals})
    check_teacher_set({"depth": depth, "normals": normals})  # relative: aligned before differentiation
    with pytest.raises(TeacherError, match="it needs a depth teacher"):
        check_teacher_set({"depth": None, "normals": normals})


@pytest.fixture(scope="module")
def sim_patches():
    cams = TeacherCameras.from_cameras(icosahedron_layout().cameras(64), ["room_00005"] * 20)
    images = torch.zeros(20, 3, 64, 64)
    depth = SimTeacher("depth").predict(images, cams)
    truth = SimTeacher("depth").ground_truth(cams)
    return cams, depth, truth


def test_geometric_normals_match_sim_normals_on_planes(sim_patches) -> None:
    cams, depth, truth = sim_patches
    pred = GeometricNormalsTeacher().predict_from_depth(depth, cams)
    assert isinstance(pred, Prediction)
    assert pred.value.shape == (20, 3, 64, 64) and pred.confidence.shape == (20, 64, 64)
    scene = generate_scene(5)
    first_cylinder = 6 + len(scene.boxes)
    planar = (truth.instance < first_cylinder) | (truth.instance >= first_cylinder + len(scene.cylinders))
    ids = truth.instance.double()[:, None]
    interior = (F.max_pool2d(ids, 5, 1, 2) == -F.max_pool2d(-ids, 5, 1, 2))[:, 0]  # no other object within 2 px
    # ... and no crease (a box's edge) within 2 px: the true normal is constant around the pixel.
    spread = F.max_pool2d(truth.normals, 5, 1, 2) + F.max_pool2d(-truth.normals, 5, 1, 2)  # (B,3,h,w) max - min
    flat = (spread < 1e-4).all(1)
    mask = planar & interior & flat
    assert float(mask.float().mean()) > 0.7
    angles = torch.rad2deg(angle_between(pred.value, truth.normals, dim=1))
    assert float(angles[mask].max()) < 1.0
    # Planes are confident; so are most pixels next to depth edges (differenced on their own side).
    assert float(pred.confidence[mask].min()) > 0.9


def test_geometric_confidence_drops_with_noise_and_handles_other_resolutions(sim_patches) -> None:
    cams, depth, _ = sim_patches
    noisy = depth * torch.exp(0.02 * torch.randn(depth.shape, generator=torch.Generator().manual_seed(0)))
    clean_conf = planarity_confidence(depth, 0.01)
    noisy_conf = planarity_confidence(noisy, 0.01)
    assert float(noisy_conf.median()) < 0.3 < float(clean_conf.median())
    holes = depth.clone()
    holes[:, 10:14, 10:14] = torch.nan
    pred = GeometricNormalsTeacher().predict_from_depth(holes, cams)
    undefined = ~torch.isfinite(pred.value).all(1)
    assert bool(undefined[:, 11, 11].all())
    assert bool((pred.confidence[undefined] == 0).all())
    # Depth at half the patch size (as a teacher may return it) covers the same patch.
    half = F.interpolate(depth[:, None], size=(32, 32), mode="area")[:, 0]
    coarse = GeometricNormalsTeacher().predict_from_depth(half, cams)
    assert coarse.value.shape == (20, 3, 32, 32)
    fine = F.interpolate(GeometricNormalsTeacher().predict_from_depth(depth, cams).value, size=(32, 32), mode="area")
    agree = torch.rad2deg(angle_between(coarse.value, fine, dim=1))
    assert float(agree.nan_to_num(180.0).median()) < 1.0
