"""Vectorised ray casting of synthetic scenes: RGB, range, normals and ADE20K ids.

Rays start at the camera (the world origin). Every output is exact for the ray through a
pixel centre (no anti-aliasing), so an ERP render and a perspective render of the same
scene agree wherever their rays coincide. Textures are functions of the 3-D hit point,
not of the image, for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spherical.ade20k import ADE20K_ID
from spherical.camera import PatchCameras
from spherical.depth import world_to_camera_normals
from spherical.erp import erp_rays
from synthetic.scene import CHECKER, PLAIN, STRIPES, TILES, WOOD, Scene

_CHUNK = 1 << 19  # rays per pass: bounds peak memory for large renders
_AMBIENT = 0.35


@dataclass(frozen=True)
class RayHits:
    """What each ray sees. Leading shape (...) is the ray batch shape.

    Fields:
        range: (...) float metres from the camera to the hit.
        normals: (..., 3) unit world-frame normals facing the camera.
        semantic: (...) uint8 ADE20K ids.
        instance: (...) int32 object index (0-5 room surfaces, then boxes, cylinders, panels).
        rgb: (..., 3) float shaded colour in [0, 1].
    """

    range: Tensor
    normals: Tensor
    semantic: Tensor
    instance: Tensor
    rgb: Tensor


@dataclass(frozen=True)
class ErpRender:
    """Ground truth of a panorama (ERP, world frame).

    Fields:
        rgb: (3,H,W) float32 RGB in [0, 1].
        range: (H,W) float32 metres.
        normals: (3,H,W) float32 unit world normals facing the camera.
        semantic: (H,W) uint8 ADE20K ids.
        instance: (H,W) int32 object index.
    """

    rgb: Tensor
    range: Tensor
    normals: Tensor
    semantic: Tensor
    instance: Tensor


@dataclass(frozen=True)
class PatchRender:
    """Ground truth of N perspective patches (camera frames).

    Fields:
        rgb: (N,3,h,w) float32 RGB in [0, 1].
        zdepth: (N,h,w) float32 planar depth, metres.
        range: (N,h,w) float32 metres along each pixel's ray.
        normals: (N,3,h,w) float32 unit normals in each camera frame, facing the camera.
        semantic: (N,h,w) uint8 ADE20K ids.
        instance: (N,h,w) int32 object index.
    """

    rgb: Tensor
    zdepth: Tensor
    range: Tensor
    normals: Tensor
    semantic: Tensor
    instance: Tensor


class _SceneTensors:
    """A scene's primitives and per-object material table as tensors on one device."""

    def __init__(self, scene: Scene, dtype: torch.dtype, device: torch.device | str | None) -> None:
        def t(x: object) -> Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device)

        room = scene.room
        self.room_min = t([room.x_min, room.y_ceiling, room.z_min])
        self.room_max = t([room.x_max, room.y_floor, room.z_max])
        self.boxes = scene.boxes
        self.cylinders = scene.cylinders
        self.panels = scene.panels
        self.light = t(scene.light)

        surface_class = [ADE20K_ID["wall"]] * 4 + [ADE20K_ID["floor"], ADE20K_ID["ceiling"]]
        surface_color = [room.wall_color] * 4 + [room.floor_color, room.ceiling_color]
        surface_pattern = [PLAIN] * 4 + [room.floor_pattern, PLAIN]
        parts = [*scene.boxes, *scene.cylinders, *scene.panels]
        self.first_box = 6
        self.first_cylinder = 6 + len(scene.boxes)
        self.first_panel = self.first_cylinder + len(scene.cylinders)
        self.classes = torch.tensor([*surface_class, *(p.class_id for p in parts)], device=device)
        self.colors = t([*surface_color, *(p.color for p in parts)])
        self.patterns = torch.tensor([*surface_pattern, *(p.pattern for p in parts)], device=device)
        emissive = [False] * (6 + len(scene.boxes) + len(scene.cylinders))
        self.emissive = torch.tensor([*emissive, *(p.emissive for p in scene.panels)], device=device)
        # Texture frames: boxes turn with their yaw; everything else uses world axes.
        centers = [(0.0, 0.0, 0.0)] * 6 + [b.center for b in scene.boxes]
        centers += [(c.center_xz[0], 0.0, c.center_xz[1]) for c in scene.cylinders]
        centers += [(0.0, 0.0, 0.0)] * len(scene.panels)
        self.centers = t(centers)
        yaws = [0.0] * 6 + [b.yaw for b in scene.boxes] + [0.0] * (len(parts) - len(scene.boxes))
        self.yaws = t(yaws)


def _cone_candidates(dirs: Tensor, center: Tensor, radius: float) -> Tensor | None:
    """Indices of rays that may hit a sphere (center, radius), or None when all may."""
    dist = float(torch.linalg.vector_norm(center))
    if dist <= radius * 1.001:
        return None
    cos_limit = math.sqrt(1.0 - (radius / dist) ** 2)
    return torch.nonzero(dirs @ (center / dist) >= cos_limit - 1e-6).squeeze(1)


def _keep_closer(best: dict[str, Tensor], idx: Tensor | None, t: Tensor, normal: Tensor, obj: int) -> None:
    """Write hits (t, normal) of object `obj` where they are closer than the current best."""
    if idx is None:
        closer = t < best["t"]
        best["t"] = torch.where(closer, t, best["t"])
        best["n"] = torch.where(closer[:, None], normal, best["n"])
        best["obj"] = torch.where(closer, obj, best["obj"])
        return
    closer = t < best["t"][idx]
    hit_idx = idx[closer]
    best["t"][hit_idx] = t[closer]
    best["n"][hit_idx] = normal[closer]
    best["obj"][hit_idx] = obj


def _yaw_rotate(v: Tensor, yaw: Tensor | float) -> Tensor:
    """Rotate (..., 3) vectors about the vertical by `yaw` (R_yaw of the conventions)."""
    c = torch.cos(torch.as_tensor(yaw, dtype=v.dtype, device=v.device))
    s = torch.sin(torch.as_tensor(yaw, dtype=v.dtype, device=v.device))
    x, y, z = v.unbind(-1)
    return torch.stack((c * x + s * z, y, -s * x + c * z), -1)


def _intersect_room(dirs: Tensor, st: _SceneTensors) -> dict[str, Tensor]:
    """Hit of every ray with the inside of the room box."""
    inf = torch.full_like(dirs, math.inf)
    t_axes = torch.where(dirs > 0, st.room_max / dirs, torch.where(dirs < 0, st.room_min / dirs, inf))
    t, axis = t_axes.min(dim=1)  # (M,), (M,)
    positive = torch.gather(dirs, 1, axis[:, None]).squeeze(1) > 0
    # Surface ids: x_min 0, x_max 1, z_min 2, z_max 3, floor 4 (y_floor), ceiling 5.
    neg_ids = torch.tensor([0, 5, 2], device=dirs.device)
    pos_ids = torch.tensor([1, 4, 3], device=dirs.device)
    obj = torch.where(positive, pos_ids[axis], neg_ids[axis])
    normal = torch.zeros_like(dirs)
    normal.scatter_(1, axis[:, None], torch.where(positive, -1.0, 1.0).to(dirs.dtype)[:, None])
    return {"t": t, "n": normal, "obj": obj}


def _intersect_boxes(dirs: Tensor, st: _SceneTensors, best: dict[str, Tensor]) -> None:
    for k, box in enumerate(st.boxes):
        center = torch.tensor(box.center, dtype=dirs.dtype, device=dirs.device)
        half = torch.tensor(box.half_size, dtype=dirs.dtype, device=dirs.device)
        idx = _cone_candidates(dirs, center, float(torch.linalg.vector_norm(half)))
        d = dirs if idx is None else dirs[idx]
        if d.shape[0] == 0:
            continue
        d_local = _yaw_rotate(d, -box.yaw)  # (m,3)
        o_local = _yaw_rotate(-center, -box.yaw)  # (3,) camera in the box frame
        d_safe = torch.where(d_local.abs() < 1e-12, torch.full_like(d_local, 1e-12), d_local)
        t1 = (-half - o_local) / d_safe
        t2 = (half - o_local) / d_safe
        t_near_axes = torch.minimum(t1, t2)
        t_near, axis = t_near_axes.max(dim=1)
        t_far = torch.maximum(t1, t2).min(dim=1).values
        hit = (t_near <= t_far) & (t_near > 0)
        t = torch.where(hit, t_near, math.inf)
        sign = -torch.sign(torch.gather(d_local, 1, axis[:, None]))
        n_local = torch.zeros_like(d_local).scatter_(1, axis[:, None], sign)
        _keep_closer(best, idx, t, _yaw_rotate(n_local, box.yaw), st.first_box + k)


def _intersect_cylinders(dirs: Tensor, st: _SceneTensors, best: dict[str, Tensor]) -> None:
    for k, cyl in enumerate(st.cylinders):
        cx, cz = cyl.center_xz
        half_h = (cyl.y_bottom - cyl.y_top) / 2.0
        center = torch.tensor([cx, cyl.y_top + half_h, cz], dtype=dirs.dtype, device=dirs.device)
        idx = _cone_candidates(dirs, center, math.hypot(cyl.radius, half_h))
        d = dirs if idx is None else dirs[idx]
        if d.shape[0] == 0:
            continue
        dx, dy, dz = d.unbind(-1)
        a = (dx * dx + dz * dz).clamp_min(1e-12)
        b = -2.0 * (dx * cx + dz * cz)
        c = cx * cx + cz * cz - cyl.radius**2
        disc = b * b - 4.0 * a * c
        t_side = (-b - torch.sqrt(disc.clamp_min(0.0))) / (2.0 * a)
        y_side = t_side * dy
        side_hit = (disc >= 0) & (t_side > 0) & (y_side >= cyl.y_top) & (y_side <= cyl.y_bottom)
        t = torch.where(side_hit, t_side, math.inf)
        normal = torch.stack(
            ((t_side * dx - cx) / cyl.radius, torch.zeros_like(dx), (t_side * dz - cz) / cyl.radius), -1
        )
        for y_cap in (cyl.y_top, cyl.y_bottom):
            dy_safe = torch.where(dy.abs() < 1e-12, torch.full_like(dy, 1e-12), dy)
            t_cap = y_cap / dy_safe
            rx, rz = t_cap * dx - cx, t_cap * dz - cz
            cap_hit = (t_cap > 0) & (rx * rx + rz * rz <= cyl.radius**2) & (t_cap < t)
            t = torch.where(cap_hit, t_cap, t)
            cap_normal = torch.tensor([0.0, -math.copysign(1.0, y_cap), 0.0], dtype=d.dtype, device=d.device)
            normal = torch.where(cap_hit[:, None], cap_normal, normal)
        _keep_closer(best, idx, t, normal, st.first_cylinder + k)


def _apply_panels(dirs: Tensor, st: _SceneTensors, best: dict[str, Tensor]) -> None:
    """Doors, windows, paintings and rugs: relabel room-surface hits inside their rectangles."""
    points = dirs * best["t"][:, None]
    # (a, b) coordinates per surface: x walls (z, y), z walls (x, y), floor/ceiling (x, z).
    axes = {0: (2, 1), 1: (2, 1), 2: (0, 1), 3: (0, 1), 4: (0, 2), 5: (0, 2)}
    for k, panel in enumerate(st.panels):
        ia, ib = axes[panel.surface]
        a0, a1, b0, b1 = panel.rect
        inside = (
            (best["obj"] == panel.surface)
            & (points[:, ia] >= a0)
            & (points[:, ia] <= a1)
            & (points[:, ib] >= b0)
            & (points[:, ib] <= b1)
        )
        best["obj"] = torch.where(inside, st.first_panel + k, best["obj"])


def _pattern(kind: Tensor, u: Tensor, v: Tensor, obj: Tensor) -> Tensor:
    """Brightness multiplier of texture `kind` at surface coordinates (u, v) metres."""
    phase = obj.to(u.dtype) * 1.618
    plain = 0.92 + 0.08 * torch.sin(3.1 * u + 1.7 * v + phase) * torch.sin(2.3 * v - 1.3 * u)
    stripes = 0.8 + 0.2 * (torch.sin(2.0 * math.pi * v / 0.15 + phase) > 0).to(u.dtype)
    checker = 0.72 + 0.28 * torch.remainder(torch.floor(u / 0.25) + torch.floor(v / 0.25), 2.0)
    plank = torch.floor(u / 0.18)
    plank_shade = 0.85 + 0.15 * torch.sin(plank * 12.9898 + phase)
    wood = plank_shade * (0.8 + 0.2 * torch.sin(2.0 * math.pi * (v / 0.11 + 0.4 * torch.sin(u * 7.0 + plank))))
    grout = torch.minimum(torch.remainder(u, 0.4), torch.remainder(v, 0.4)) < 0.02
    tiles = torch.where(grout, 0.55, 0.95 + 0.05 * torch.sin(7.0 * torch.floor(u / 0.4) + 3.0 * torch.floor(v / 0.4)))
    out = plain
    for value, pattern in ((stripes, STRIPES), (checker, CHECKER), (wood, WOOD), (tiles, TILES)):
        out = torch.where(kind == pattern, value, out)
    return out


def _shade(dirs: Tensor, st: _SceneTensors, best: dict[str, Tensor]) -> Tensor:
    """(M,3) RGB of the hits: material colour x texture x Lambert shading from the light."""
    obj = best["obj"]
    points = dirs * best["t"][:, None]
    normals = best["n"]
    local = _yaw_rotate(points - st.centers[obj], -st.yaws[obj])
    local_n = _yaw_rotate(normals, -st.yaws[obj])
    axis = local_n.abs().argmax(dim=1)
    # Texture coordinates: the two local axes in the surface plane.
    u = torch.where(axis == 0, local[:, 2], local[:, 0])
    v = torch.where(axis == 1, local[:, 2], local[:, 1])
    texture = _pattern(st.patterns[obj], u, v, obj)
    to_light = st.light - points
    to_light = to_light / torch.linalg.vector_norm(to_light, dim=1, keepdim=True)
    lambert = (normals * to_light).sum(1).clamp_min(0.0)
    shade = torch.where(st.emissive[obj], 1.0, _AMBIENT + (1.0 - _AMBIENT) * lambert)
    return (st.colors[obj] * (texture * shade)[:, None]).clamp(0.0, 1.0)


def _render_chunk(dirs: Tensor, st: _SceneTensors) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    best = _intersect_room(dirs, st)
    _intersect_boxes(dirs, st, best)
    _intersect_cylinders(dirs, st, best)
    _apply_panels(dirs, st, best)
    return best["t"], best["n"], best["obj"], _shade(dirs, st, best)


def render_rays(scene: Scene, dirs: Tensor) -> RayHits:
    """Cast unit world rays (..., 3) from the camera into `scene`.

    Computed in the dtype and on the device of `dirs`.
    """
    shape = dirs.shape[:-1]
    flat = dirs.reshape(-1, 3)  # (M,3)
    st = _SceneTensors(scene, flat.dtype, flat.device)
    parts = [_render_chunk(flat[i : i + _CHUNK], st) for i in range(0, flat.shape[0], _CHUNK)]
    t, n, obj, rgb = (torch.cat(p) for p in zip(*parts, strict=True))
    return RayHits(
        range=t.reshape(shape),
        normals=n.reshape(*shape, 3),
        semantic=st.classes[obj].to(torch.uint8).reshape(shape),
        instance=obj.to(torch.int32).reshape(shape),
        rgb=rgb.reshape(*shape, 3),
    )


def render_erp(
    scene: Scene,
    height: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ErpRender:
    """Render the panorama of `scene` at ERP height `height` (width 2H)."""
    hits = render_rays(scene, erp_rays(height, dtype=dtype, device=device))  # (H,W,...)
    return ErpRender(
        rgb=hits.rgb.permute(2, 0, 1),  # (H,W,3) -> (3,H,W)
        range=hits.range,
        normals=hits.normals.permute(2, 0, 1),  # (H,W,3) -> (3,H,W)
        semantic=hits.semantic,
        instance=hits.instance,
    )


def render_patches(scene: Scene, cameras: PatchCameras) -> PatchRender:
    """Render `scene` through N perspective patch cameras (on the cameras' device/dtype)."""
    hits = render_rays(scene, cameras.world_rays())  # (N,h,w,...)
    normals_world = hits.normals.permute(0, 3, 1, 2)  # (N,h,w,3) -> (N,3,h,w)
    return PatchRender(
        rgb=hits.rgb.permute(0, 3, 1, 2),  # (N,h,w,3) -> (N,3,h,w)
        zdepth=hits.range / cameras.ray_norms(),
        range=hits.range,
        normals=world_to_camera_normals(normals_world, cameras.rotation),
        semantic=hits.semantic,
        instance=hits.instance,
    )
