"""Simulated teachers on the synthetic world, with the errors real teachers make.

The panorama id names the room (`synthetic.dataset.seed_from_name`: `.../room_<seed>`), so a
simulated teacher rebuilds the scene (`generate_scene`), renders each patch's ground truth
(`render_patches`) and adds configurable errors, all off by default: a plain `sim` is
perfect. Spec: `sim` or `sim:key=value,key=value` with the keys of the task's teacher:

depth (planar z-depth, or disparity with `relative=1`):
    scale_error=e   per-patch metric scale error: each patch's depth is multiplied by
                    s(d) = (1+e)^g(d), a smooth zero-mean random field over the patch's
                    optical axis d (see below); every patch is off by a factor in
                    [1/(1+e), 1+e].
    bias=b          global scale factor of the whole panorama (default 1).
    relative=1      affine-invariant disparity: disp = s/z + t with a random s (log-uniform
                    in [0.5, 2]) and t (uniform in [0, 0.5] * s * median(1/z)) per patch;
                    `depth_kind = "relative_disparity"`.
    noise=σ         multiplicative log-normal noise per pixel: log(out/clean) ~ N(0, σ²).
    edge_blur=r     blur depth across discontinuities: pixels with another object within r
                    patch pixels (a Gaussian of sigma r/2 on inverse depth, which keeps planes
                    planar), as real teachers smooth their edges.
normals (camera frame):
    normal_noise=a          random tilt with an RMS angle of `a` degrees ...
    normal_noise_region=1   ... drawn once per object in each patch (smooth per region)
                            instead of per pixel.
semantic (probabilities over the 150 ADE20K classes):
    confusion=c           within `confusion_width` pixels of a class boundary, a share c of
    confusion_width=w     the probability moves to the nearest class across the boundary
                          (default w = 2).
    smoothing=s           label smoothing: (1-s) one-hot + s/150.
all:
    seed=k          mixed into every random draw (default 0).

Why a zero-mean field for the scale error. Fusion aligns metric patches with one scale per
patch and fixes the geometric mean of those scales at 1, so the fused panorama's global
scale is the geometric mean of the teachers' patch scales. A real teacher's error has two
parts: a per-panorama bias (the whole room read 10% too large), which no per-patch
alignment can see, let alone fix, and patch-to-patch disagreement, which alignment exists
to remove. `scale_error` simulates only the second: log s(d) = log(1+e) g(d), with g a random
combination of the degree-1 and degree-2 real spherical harmonics of d (zero mean over the
sphere), drawn per panorama and normalised to max |g| = 1 over the sphere. Nearby patches
get similar errors, as a real teacher's do, and the log-mean over a well-spread layout is ~0
(exactly 0 over the icosahedron layout, whose 20 directions integrate polynomials of degree
<= 5 exactly). `bias` is the separate knob for the per-panorama part.

Determinism: every draw is seeded from a stable hash of (seed, pano_id, patch rotation) or
(seed, pano_id) (`base.patch_seed`), never from Python's salted `hash`, so a re-run, another
worker or another batching gives identical outputs.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.teachers.base import (
    METRIC_ZDEPTH,
    RELATIVE_DISPARITY,
    DepthKind,
    Task,
    TeacherCameras,
    TeacherError,
    patch_seed,
)
from spherical.ade20k import ADE20K_CLASSES
from spherical.depth import orient_towards
from spherical.layouts import fibonacci_directions
from synthetic.dataset import seed_from_name
from synthetic.render import PatchRender, render_patches
from synthetic.scene import Scene, generate_scene

SIM_REVISION = "sim-v1"
NUM_CLASSES = len(ADE20K_CLASSES)
_SCENE_CACHE_SIZE = 64
_FIELD_SAMPLES = 20000  # sphere samples for the max |g| of the scale field
_RELATIVE_SCALE_RANGE = (0.5, 2.0)
_RELATIVE_SHIFT_MAX = 0.5


@dataclass(frozen=True)
class SimConfig:
    """Errors of a simulated teacher; all off by default (see the module doc)."""

    # Mixed into every random draw.
    seed: int = 0
    # Depth: per-patch metric scale error e (factors in [1/(1+e), 1+e]).
    scale_error: float = 0.0
    # Depth: global scale factor of every panorama.
    bias: float = 1.0
    # Depth: output affine-invariant disparity with a random scale and shift per patch.
    relative: bool = False
    # Depth: std of the per-pixel log-normal multiplicative noise.
    noise: float = 0.0
    # Depth: blur radius in patch pixels around object boundaries.
    edge_blur: float = 0.0
    # Normals: RMS tilt in degrees.
    normal_noise: float = 0.0
    # Normals: one tilt per object and patch instead of per pixel.
    normal_noise_region: bool = False
    # Semantic: share of probability moved across class boundaries.
    confusion: float = 0.0
    # Semantic: distance in pixels from a boundary within which confusion applies.
    confusion_width: int = 2
    # Semantic: label smoothing.
    smoothing: float = 0.0


TASK_KEYS: dict[str, tuple[str, ...]] = {
    "depth": ("seed", "scale_error", "bias", "relative", "noise", "edge_blur"),
    "normals": ("seed", "normal_noise", "normal_noise_region"),
    "semantic": ("seed", "confusion", "confusion_width", "smoothing"),
}
_TYPES = {f.name: f.type for f in fields(SimConfig)}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_value(key: str, text: str, prefix: str) -> int | float | bool:
    kind = _TYPES[key]
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise TeacherError(f"{prefix}: {key}={text!r} is not a valid {kind}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise TeacherError(f"{prefix}: {key} must be finite, got {text}")
    return value


def _validate(cfg: SimConfig, prefix: str) -> None:
    checks = [
        (cfg.scale_error >= 0, "scale_error must be >= 0"),
        (cfg.bias > 0, "bias must be > 0"),
        (0 <= cfg.noise <= 1, "noise must lie in [0, 1]"),
        (cfg.edge_blur >= 0, "edge_blur must be >= 0"),
        (0 <= cfg.normal_noise < 90, "normal_noise must lie in [0, 90) degrees"),
        (0 <= cfg.confusion <= 1, "confusion must lie in [0, 1]"),
        (cfg.confusion_width >= 1, "confusion_width must be >= 1"),
        (0 <= cfg.smoothing <= 1, "smoothing must lie in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise TeacherError(f"{prefix}: {message}")


def parse_sim_spec(spec: str, task: Task) -> SimConfig:
    """`sim` or `sim:key=value,...` -> SimConfig, with typed values and the keys of `task`."""
    prefix = f"{task} teacher {spec}"
    name, _, body = spec.partition(":")
    if name != "sim":
        raise TeacherError(f"{prefix}: not a sim spec")
    valid = TASK_KEYS[task]
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not text.strip():
            raise TeacherError(f"{prefix}: expected key=value, got {item!r}")
        if key not in valid:
            raise TeacherError(f"{prefix}: unknown key {key!r} for the {task} teacher; valid keys: {', '.join(valid)}")
        values[key] = _parse_value(key, text.strip(), prefix)
    cfg = SimConfig(**values)
    _validate(cfg, prefix)
    return cfg


def _stable_seed(*parts: object) -> int:
    key = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def _degree2_basis(dirs: np.ndarray) -> np.ndarray:
    """(N,8) real spherical harmonics of degrees 1 and 2 (unnormalised) at unit (N,3) dirs."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    return np.stack([x, y, z, x * y, y * z, z * x, x * x - y * y, 3 * z * z - 1], -1)


@dataclass(frozen=True)
class ScaleField:
    """A panorama's per-patch scale error: log s(d) = log(1+e) g(d), g in [-1, 1].

    Fields:
        coefficients: (8,) weights of the degree-1 and degree-2 harmonics, already divided
            by max |g| over the sphere.
        error: e.
    """

    coefficients: np.ndarray
    error: float

    @classmethod
    def draw(cls, error: float, seed: int) -> ScaleField:
        rng = np.random.default_rng(seed)
        coefficients = rng.standard_normal(8)
        peak = np.abs(_degree2_basis(fibonacci_directions(_FIELD_SAMPLES)) @ coefficients).max()
        return cls(coefficients / peak, error)

    def g(self, dirs: np.ndarray) -> np.ndarray:
        """(N,) field values in [-1, 1] at unit (N,3) directions (clipped: the sampled peak
        may miss the true one by a hair)."""
        return np.clip(_degree2_basis(dirs) @ self.coefficients, -1.0, 1.0)

    def scale(self, dirs: np.ndarray) -> np.ndarray:
        """(N,) scale factors (1+e)^g(d), in [1/(1+e), 1+e]."""
        return np.exp(math.log1p(self.error) * self.g(dirs))


def _object_count(scene: Scene) -> int:
    """Number of instance ids of a scene's renders (6 room surfaces, boxes, cylinders, panels)."""
    return 6 + len(scene.boxes) + len(scene.cylinders) + len(scene.panels)


def _gaussian_kernel(radius: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    half = max(1, math.ceil(radius))
    sigma = max(radius / 2.0, 0.5)
    x = torch.arange(-half, half + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def near_other_object(instance: Tensor, radius: int) -> Tensor:
    """(B,h,w) bool: pixels with another object within `radius` pixels (a square window)."""
    ids = instance.double()[:, None]  # (B,1,h,w); float64 holds every int32 id exactly
    k = 2 * radius + 1
    return (F.max_pool2d(ids, k, 1, radius) != -F.max_pool2d(-ids, k, 1, radius))[:, 0]


def blur_depth_edges(zdepth: Tensor, instance: Tensor, radius: float) -> Tensor:
    """(B,h,w) depth blurred where another object is within `radius` pixels.

    The blur (Gaussian, sigma radius/2) acts on inverse depth, which is affine in the pixel
    coordinates on a plane, so surfaces stay planar away from the image border.
    """
    kernel = _gaussian_kernel(radius, zdepth.dtype, zdepth.device)
    k = kernel.numel()
    q = (1.0 / zdepth)[:, None]  # (B,1,h,w)
    q = F.conv2d(F.pad(q, (k // 2, k // 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, k))
    q = F.conv2d(F.pad(q, (0, 0, k // 2, k // 2), mode="replicate"), kernel.view(1, 1, k, 1))
    return torch.where(near_other_object(instance, k // 2), 1.0 / q[:, 0], zdepth)


def nearest_other_class(labels: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """For each pixel, the nearest different class within `width` pixels (Euclidean).

    Args:
        labels: (B,h,w) int class ids.
    Returns:
        other: (B,h,w) int64 that class (the pixel's own where none).
        found: (B,h,w) bool, whether a different class lies within `width`.
    """
    labels = labels.long()
    other = labels.clone()
    found = torch.zeros_like(labels, dtype=torch.bool)
    h, w = labels.shape[-2:]
    span = range(-width, width + 1)
    offsets = [(dy, dx) for dy in span for dx in span if 0 < dy * dy + dx * dx <= width * width]
    offsets.sort(key=lambda o: (o[0] ** 2 + o[1] ** 2, o))  # nearest first, ties in a fixed order
    for dy, dx in offsets:
        shifted = torch.full_like(labels, -1)
        shifted[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = labels[
            :, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]  # shifted[i, j] = labels[i + dy, j + dx], -1 outside the patch
        new = (shifted >= 0) & (shifted != labels) & ~found
        other = torch.where(new, shifted, other)
        found |= new
    return other, found


class SimTeacher:
    """A simulated teacher for one task (see the module doc).

    predict(images (B,3,h,w), cameras) renders the patches of `cameras` (the images are only
    checked for their size) and returns, at (h,w):
      depth: (B,h,w) float32 planar z-depth in metres, or disparity when `relative`;
      normals: (B,3,h,w) float32 unit normals in each camera frame, facing the camera;
      semantic: (B,150,h,w) float32 probabilities over the ADE20K classes.
    """

    def __init__(self, task: Task, config: SimConfig | None = None, spec: str = "sim") -> None:
        self.task = task
        self.config = config or SimConfig()
        self.spec = spec
        # Full-resolution 150-class maps are large (160 MB per 518 px patch): few per call.
        self.batch_size = 2 if task == "semantic" else 16
        if task == "depth":
            self.depth_kind: DepthKind = RELATIVE_DISPARITY if self.config.relative else METRIC_ZDEPTH
        if task == "semantic":
            self.class_names = ADE20K_CLASSES
        self._scenes: OrderedDict[str, Scene] = OrderedDict()
        self._fields: dict[str, ScaleField] = {}

    def scene(self, pano_id: str) -> Scene:
        """The synthetic room of a panorama id (cached)."""
        if pano_id not in self._scenes:
            try:
                seed = seed_from_name(pano_id)
            except ValueError:
                raise TeacherError(
                    f"{self.task} teacher {self.spec}: panorama {pano_id!r} is not a synthetic room "
                    "(sim teachers need ids ending in room_<seed>)"
                ) from None
            self._scenes[pano_id] = generate_scene(seed)
            if len(self._scenes) > _SCENE_CACHE_SIZE:
                self._scenes.popitem(last=False)
        return self._scenes[pano_id]

    def scale_field(self, pano_id: str) -> ScaleField:
        """The per-patch scale error field of a panorama (depth teachers)."""
        if pano_id not in self._fields:
            seed = _stable_seed("sim-scale-field", self.config.seed, pano_id)
            self._fields[pano_id] = ScaleField.draw(self.config.scale_error, seed)
        return self._fields[pano_id]

    def ground_truth(self, cameras: TeacherCameras) -> PatchRender:
        """Renders of every patch, in batch order (patches grouped per panorama to render)."""
        ids = cameras.pano_ids
        order: list[int] = []
        parts: list[PatchRender] = []
        for pano_id in dict.fromkeys(ids):
            index = [i for i, p in enumerate(ids) if p == pano_id]
            parts.append(render_patches(self.scene(pano_id), cameras[index]))
            order += index
        inverse = torch.argsort(torch.tensor(order))
        return PatchRender(
            **{
                name: torch.cat([getattr(p, name) for p in parts])[inverse.to(parts[0].zdepth.device)]
                for name in ("rgb", "zdepth", "range", "normals", "semantic", "instance")
            }
        )

    def _generator(self, cameras: TeacherCameras, i: int, purpose: str) -> torch.Generator:
        seed = patch_seed(cameras.pano_ids[i], cameras.rotation[i], "sim", self.config.seed, purpose)
        return torch.Generator().manual_seed(seed)

    def _randn(self, cameras: TeacherCameras, purpose: str, shape: tuple[int, ...]) -> Tensor:
        """(B, *shape) standard normal draws, one generator per patch, on the CPU."""
        draws = [torch.randn(shape, generator=self._generator(cameras, i, purpose)) for i in range(len(cameras))]
        return torch.stack(draws)

    def _rand(self, cameras: TeacherCameras, purpose: str, n: int) -> Tensor:
        """(B,n) uniform [0,1) draws, one generator per patch."""
        return torch.stack([torch.rand(n, generator=self._generator(cameras, i, purpose)) for i in range(len(cameras))])

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        if tuple(images.shape[-2:]) != (cameras.height, cameras.width) or images.shape[0] != len(cameras):
            raise TeacherError(
                f"{self.task} teacher {self.spec}: images {tuple(images.shape)} do not match "
                f"{len(cameras)} cameras of {cameras.height}x{cameras.width}"
            )
        cams = cameras.to(images.device, torch.float32)
        gt = self.ground_truth(cams)
        if self.task == "depth":
            return self._depth(gt, cams)
        if self.task == "normals":
            return self._normals(gt, cams)
        return self._semantic(gt)

    def _depth(self, gt: PatchRender, cameras: TeacherCameras) -> Tensor:
        cfg = self.config
        z = gt.zdepth
        if cfg.edge_blur > 0:
            z = blur_depth_edges(z, gt.instance, cfg.edge_blur)
        scale = torch.full((len(cameras),), cfg.bias, dtype=torch.float64)
        if cfg.scale_error > 0:
            axes = cameras.optical_axes().double().cpu().numpy()  # (B,3)
            per_patch = [self.scale_field(p).scale(axes[i : i + 1])[0] for i, p in enumerate(cameras.pano_ids)]
            scale = scale * torch.tensor(per_patch, dtype=torch.float64)
        z = z * scale.to(z)[:, None, None]
        out = z
        if cfg.relative:
            u = self._rand(cameras, "relative", 2).to(z)  # (B,2)
            lo, hi = _RELATIVE_SCALE_RANGE
            s = torch.exp(math.log(lo) + u[:, 0] * math.log(hi / lo))  # (B,)
            median_disparity = (1.0 / z).flatten(1).median(1).values  # (B,)
            t = u[:, 1] * _RELATIVE_SHIFT_MAX * s * median_disparity
            out = s[:, None, None] / z + t[:, None, None]
        if cfg.noise > 0:
            eps = self._randn(cameras, "depth-noise", tuple(z.shape[1:])).to(z)  # (B,h,w)
            out = out * torch.exp(cfg.noise * eps)
        return out.float()

    def _normals(self, gt: PatchRender, cameras: TeacherCameras) -> Tensor:
        cfg = self.config
        n = gt.normals  # (B,3,h,w)
        if cfg.normal_noise <= 0:
            return n.float()
        sigma = math.radians(cfg.normal_noise) / math.sqrt(2.0)  # per tangent component: RMS tilt = a
        if cfg.normal_noise_region:
            # One draw per object of the patch's scene: the table depends on the patch alone.
            counts = [_object_count(self.scene(p)) for p in cameras.pano_ids]
            table = torch.zeros(len(cameras), max(counts), 3)
            for i, count in enumerate(counts):
                table[i, :count] = torch.randn((count, 3), generator=self._generator(cameras, i, "normal-region"))
            table = table.to(n)  # (B,K,3)
            index = gt.instance.long().flatten(1)[..., None].expand(-1, -1, 3)  # (B,h*w,3)
            eps = torch.gather(table, 1, index).transpose(1, 2).reshape(n.shape)  # (B,3,h,w)
        else:
            eps = self._randn(cameras, "normal-noise", tuple(n.shape[1:])).to(n)  # (B,3,h,w)
        tangent = eps - (eps * n).sum(1, keepdim=True) * n  # (B,3,h,w)
        tilted = n + sigma * tangent
        tilted = tilted / torch.linalg.vector_norm(tilted, dim=1, keepdim=True)
        rays = cameras.camera_rays().permute(0, 3, 1, 2)  # (B,h,w,3) -> (B,3,h,w)
        return orient_towards(tilted, rays).float()

    def _semantic(self, gt: PatchRender) -> Tensor:
        cfg = self.config
        labels = gt.semantic.long()  # (B,h,w)
        b, h, w = labels.shape
        probs = torch.zeros(b, NUM_CLASSES, h, w, dtype=torch.float32, device=labels.device)
        if cfg.confusion > 0:
            other, near = nearest_other_class(labels, cfg.confusion_width)
            moved = cfg.confusion * near.float()  # (B,h,w)
            probs.scatter_(1, labels[:, None], (1.0 - moved)[:, None])
            probs.scatter_add_(1, other[:, None], moved[:, None])
        else:
            probs.scatter_(1, labels[:, None], 1.0)
        if cfg.smoothing > 0:
            probs = probs * (1.0 - cfg.smoothing) + cfg.smoothing / NUM_CLASSES
        return probs

    def describe(self) -> dict[str, Any]:
        settings = {k: v for k, v in asdict(self.config).items() if k in TASK_KEYS[self.task]}
        info: dict[str, Any] = {"spec": self.spec, "model_id": "sim", "revision": SIM_REVISION, **settings}
        if self.task == "depth":
            info["depth_kind"] = self.depth_kind
        return info
