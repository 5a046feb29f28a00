"""Procedural indoor rooms: the project's ground-truth world.

A scene is a box-shaped room seen from a camera at the world origin (x right, y down,
z forward: docs/conventions.md), furnished with boxes and vertical cylinders and with
doors, windows, paintings and rugs as panels on its surfaces. Every part carries an
ADE20K-150 class id. `generate_scene(seed)` is deterministic for a seed; scenes round-trip
through JSON so a label or a teacher can name the exact world it came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from spherical.ade20k import ADE20K_ID

Vec3 = tuple[float, float, float]

# Texture patterns (see synthetic.render): 0 plain, 1 stripes, 2 checker, 3 wood, 4 tiles.
PLAIN, STRIPES, CHECKER, WOOD, TILES = range(5)


@dataclass(frozen=True)
class SceneConfig:
    """Ranges the generator draws from (metres)."""

    # Side lengths of the rectangular floor.
    floor_size: tuple[float, float] = (3.0, 10.0)
    # Floor-to-ceiling height.
    room_height: tuple[float, float] = (2.4, 3.5)
    # Camera height above the floor.
    camera_height: tuple[float, float] = (1.2, 1.8)
    # Number of furniture pieces attempted (fewer when the room is full).
    furniture: tuple[int, int] = (5, 10)
    # Free radius around the camera, so it never stands inside or against furniture.
    camera_clearance: float = 0.7
    # Minimum distance from the camera to a wall.
    wall_margin: float = 0.8


@dataclass(frozen=True)
class Box:
    """An upright box: `center` world metres, `half_size` along its local axes, turned by
    `yaw` radians about the vertical (same sense as the camera yaw)."""

    kind: str
    class_id: int
    center: Vec3
    half_size: Vec3
    yaw: float
    color: Vec3
    pattern: int


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder: axis at (x, z) = `center_xz`, spanning y in [y_top, y_bottom]
    (y grows downwards, so y_top < y_bottom)."""

    kind: str
    class_id: int
    center_xz: tuple[float, float]
    y_top: float
    y_bottom: float
    radius: float
    color: Vec3
    pattern: int


@dataclass(frozen=True)
class Panel:
    """A flat rectangle on a room surface (door, window, painting, rug).

    `surface` indexes Room.SURFACES; `rect` = (a0, a1, b0, b1) in that surface's (a, b)
    coordinates: walls x_min/x_max use (z, y), walls z_min/z_max use (x, y), floor and
    ceiling use (x, z).
    """

    kind: str
    class_id: int
    surface: int
    rect: tuple[float, float, float, float]
    color: Vec3
    pattern: int
    emissive: bool = False


@dataclass(frozen=True)
class Room:
    """The room box around the camera at the origin (x_min < 0 < x_max, y_ceiling < 0 < y_floor)."""

    SURFACES = ("x_min", "x_max", "z_min", "z_max", "floor", "ceiling")

    x_min: float
    x_max: float
    z_min: float
    z_max: float
    y_ceiling: float
    y_floor: float
    wall_color: Vec3
    floor_color: Vec3
    ceiling_color: Vec3
    floor_pattern: int

    @property
    def height(self) -> float:
        return self.y_floor - self.y_ceiling


@dataclass(frozen=True)
class Scene:
    """One furnished room; the camera is at the origin, `light` is a point light (metres)."""

    seed: int
    room: Room
    boxes: tuple[Box, ...] = field(default_factory=tuple)
    cylinders: tuple[Cylinder, ...] = field(default_factory=tuple)
    panels: tuple[Panel, ...] = field(default_factory=tuple)
    light: Vec3 = (0.0, -2.0, 0.0)

    @property
    def camera_height(self) -> float:
        return self.room.y_floor

    def class_ids(self) -> set[int]:
        """ADE20K ids of everything in the scene, room surfaces included."""
        ids = {ADE20K_ID["wall"], ADE20K_ID["floor"], ADE20K_ID["ceiling"]}
        ids |= {p.class_id for p in (*self.boxes, *self.cylinders, *self.panels)}
        return ids

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        data = json.loads(text)

        def tup(x: object) -> object:
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        return cls(
            seed=data["seed"],
            room=Room(**{k: tup(v) for k, v in data["room"].items()}),
            boxes=tuple(Box(**{k: tup(v) for k, v in b.items()}) for b in data["boxes"]),
            cylinders=tuple(Cylinder(**{k: tup(v) for k, v in c.items()}) for c in data["cylinders"]),
            panels=tuple(Panel(**{k: tup(v) for k, v in p.items()}) for p in data["panels"]),
            light=tup(data["light"]),
        )


# Furniture catalogue: name -> (ADE20K class, footprint size range (length, depth) m,
# height range m, against a wall?). Compound pieces add parts in `_furnish`.
_CATALOGUE: dict[str, tuple[str, tuple[float, float], tuple[float, float], tuple[float, float], bool]] = {
    "bed": ("bed", (1.9, 2.1), (1.4, 1.8), (0.45, 0.6), True),
    "cabinet": ("cabinet", (0.6, 1.2), (0.4, 0.6), (0.7, 1.0), True),
    "wardrobe": ("wardrobe", (0.9, 1.6), (0.55, 0.65), (1.8, 2.2), True),
    "bookcase": ("bookcase", (0.7, 1.2), (0.3, 0.4), (1.5, 2.0), True),
    "sofa": ("sofa", (1.6, 2.2), (0.8, 0.95), (0.4, 0.45), True),
    "table": ("table", (1.0, 1.6), (0.7, 0.9), (0.72, 0.78), False),
    "coffee table": ("coffee table", (0.8, 1.2), (0.5, 0.7), (0.35, 0.45), False),
    "chair": ("chair", (0.42, 0.5), (0.42, 0.5), (0.44, 0.48), False),
    "stool": ("stool", (0.3, 0.4), (0.3, 0.4), (0.45, 0.65), False),
    "lamp": ("lamp", (0.3, 0.45), (0.3, 0.45), (1.4, 1.7), False),
    "plant": ("plant", (0.35, 0.6), (0.35, 0.6), (0.8, 1.4), False),
}
# Yaw that turns a piece's front (local +z) into the room, per wall (Room.SURFACES order).
_WALL_YAW = {0: math.pi / 2, 1: -math.pi / 2, 2: 0.0, 3: math.pi}
_KIND_WEIGHTS = {
    "bed": 1.0,
    "cabinet": 1.5,
    "wardrobe": 0.8,
    "bookcase": 1.0,
    "sofa": 1.0,
    "table": 1.5,
    "coffee table": 1.0,
    "chair": 2.0,
    "stool": 0.8,
    "lamp": 0.8,
    "plant": 0.8,
}


def _color(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.9) -> Vec3:
    return tuple(float(c) for c in rng.uniform(lo, hi, 3))


def _rect_corners(cx: float, cz: float, half_len: float, half_dep: float, yaw: float) -> np.ndarray:
    """(4,2) floor corners (x, z) of a footprint turned by yaw (local x along its length)."""
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[-half_len, -half_dep], [half_len, -half_dep], [half_len, half_dep], [-half_len, half_dep]])
    # Yaw turns local +z (forward) towards +x: x = c*lx + s*lz, z = -s*lx + c*lz.
    return np.stack((cx + c * local[:, 0] + s * local[:, 1], cz - s * local[:, 0] + c * local[:, 1]), -1)


def _separated(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Whether two convex floor polygons (k,2) are at least `gap` apart along some edge normal."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for e in edges:
            n = np.array([-e[1], e[0]]) / np.linalg.norm(e)
            pa, pb = a @ n, b @ n
            if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
                return True
    return False


def _furnish(
    kind: str,
    rng: np.random.Generator,
    cx: float,
    cz: float,
    length: float,
    depth: float,
    height: float,
    yaw: float,
    floor_y: float,
) -> tuple[list[Box], list[Cylinder]]:
    """Primitives of one piece standing on the floor at (cx, cz); local +z is its front."""
    cls_name = _CATALOGUE[kind][0]
    cid = ADE20K_ID[cls_name]
    color = _color(rng)
    boxes: list[Box] = []
    cyls: list[Cylinder] = []
    c, s = math.cos(yaw), math.sin(yaw)

    def at(lx: float, lz: float) -> tuple[float, float]:
        return cx + c * lx + s * lz, cz - s * lx + c * lz

    def box(
        lx: float, lz: float, y0: float, y1: float, hl: float, hd: float, col: Vec3, pattern: int, cid_: int = cid
    ) -> None:
        x, z = at(lx, lz)
        boxes.append(Box(kind, cid_, (x, floor_y - (y0 + y1) / 2.0, z), (hl, (y1 - y0) / 2.0, hd), yaw, col, pattern))

    hl, hd = length / 2.0, depth / 2.0
    if kind == "bed":
        box(0.0, 0.0, 0.0, height, hl, hd, color, STRIPES)
        box(0.0, -hd + 0.04, 0.0, height + 0.5, hl, 0.04, _color(rng, 0.2, 0.5), WOOD)
    elif kind == "sofa":
        box(0.0, 0.1, 0.0, height, hl, hd - 0.1, color, PLAIN)
        box(0.0, -hd + 0.1, 0.0, height + 0.4, hl, 0.1, color, PLAIN)
        for side in (-1.0, 1.0):
            box(side * (hl - 0.1), 0.1, 0.0, height + 0.2, 0.1, hd - 0.1, color, PLAIN)
    elif kind in ("table", "coffee table", "chair"):
        top = 0.04
        pattern = WOOD if kind != "chair" else PLAIN
        box(0.0, 0.0, height - top, height, hl, hd, color, pattern)
        leg = 0.03 if kind == "chair" else 0.04
        for sx in (-1.0, 1.0):
            for sz in (-1.0, 1.0):
                box(sx * (hl - leg), sz * (hd - leg), 0.0, height - top, leg, leg, color, PLAIN)
        if kind == "chair":
            box(0.0, -hd + 0.02, height, height + 0.45, hl, 0.02, color, PLAIN)
    elif kind in ("stool",):
        x, z = at(0.0, 0.0)
        cyls.append(Cylinder(kind, cid, (x, z), floor_y - height, floor_y, hl, color, PLAIN))
    elif kind == "lamp":
        x, z = at(0.0, 0.0)
        shade = 0.35
        cyls.append(Cylinder(kind, cid, (x, z), floor_y - height + shade, floor_y, 0.02, (0.2, 0.2, 0.2), PLAIN))
        cyls.append(Cylinder(kind, cid, (x, z), floor_y - height, floor_y - height + shade, hl, color, STRIPES))
    elif kind == "plant":
        x, z = at(0.0, 0.0)
        pot = 0.3
        cyls.append(Cylinder("pot", ADE20K_ID["pot"], (x, z), floor_y - pot, floor_y, hl * 0.6, _color(rng), PLAIN))
        green = (float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.1, 0.25)))
        cyls.append(Cylinder(kind, cid, (x, z), floor_y - height, floor_y - pot, hl, green, CHECKER))
    else:  # cabinet, wardrobe, bookcase: a plain block with a pattern
        pattern = {"cabinet": TILES, "wardrobe": WOOD, "bookcase": STRIPES}[kind]
        box(0.0, 0.0, 0.0, height, hl, hd, color, pattern)
    return boxes, cyls


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """A furnished room, deterministic for `seed` (numpy's PCG64)."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    width, depth = rng.uniform(*cfg.floor_size, 2)
    height = float(rng.uniform(*cfg.room_height))
    cam_h = float(rng.uniform(*cfg.camera_height))
    # Camera position in room coordinates [0, width] x [0, depth].
    px = float(rng.uniform(cfg.wall_margin, width - cfg.wall_margin))
    pz = float(rng.uniform(cfg.wall_margin, depth - cfg.wall_margin))
    room = Room(
        x_min=-px,
        x_max=float(width) - px,
        z_min=-pz,
        z_max=float(depth) - pz,
        y_ceiling=cam_h - height,
        y_floor=cam_h,
        wall_color=_color(rng, 0.5, 0.95),
        floor_color=_color(rng, 0.3, 0.7),
        ceiling_color=tuple(float(v) for v in rng.uniform(0.85, 0.97, 3)),
        floor_pattern=int(rng.choice([WOOD, TILES, CHECKER])),
    )

    # Wall panels (doors, windows, paintings, curtains) on the four walls, without overlaps.
    wall_len = {0: depth, 1: depth, 2: width, 3: width}
    wall_lo = {0: room.z_min, 1: room.z_min, 2: room.x_min, 3: room.x_min}
    used: dict[int, list[tuple[float, float]]] = {k: [] for k in range(4)}
    panels: list[Panel] = []

    def place_on_wall(
        kind: str,
        w: float,
        y_top_above_floor: float,
        y_bottom_above_floor: float,
        pattern: int,
        color: Vec3,
        emissive: bool = False,
    ) -> bool:
        for _ in range(20):
            wall = int(rng.integers(4))
            if wall_len[wall] < w + 0.4:
                continue
            a0 = float(rng.uniform(0.2, wall_len[wall] - w - 0.2))
            if any(a0 < u1 + 0.15 and a0 + w > u0 - 0.15 for u0, u1 in used[wall]):
                continue
            used[wall].append((a0, a0 + w))
            lo = wall_lo[wall]
            rect = (lo + a0, lo + a0 + w, room.y_floor - y_top_above_floor, room.y_floor - y_bottom_above_floor)
            panels.append(Panel(kind, ADE20K_ID[kind], wall, rect, color, pattern, emissive))
            return True
        return False

    door_h = float(rng.uniform(2.0, 2.15))
    place_on_wall("door", float(rng.uniform(0.8, 1.0)), door_h, 0.0, WOOD, _color(rng, 0.3, 0.6))
    for _ in range(int(rng.integers(1, 3))):
        sill = float(rng.uniform(0.8, 1.0))
        top = min(height - 0.25, sill + float(rng.uniform(1.0, 1.4)))
        place_on_wall("windowpane", float(rng.uniform(1.0, 1.6)), top, sill, TILES, (0.85, 0.92, 1.0), emissive=True)
    for _ in range(int(rng.integers(0, 3))):
        bottom = float(rng.uniform(1.2, 1.5))
        place_on_wall(
            "painting",
            float(rng.uniform(0.4, 1.0)),
            bottom + float(rng.uniform(0.4, 0.8)),
            bottom,
            CHECKER,
            _color(rng),
        )
    if rng.random() < 0.6:
        rw, rd = float(rng.uniform(1.2, 2.5)), float(rng.uniform(0.8, 1.8))
        rx = float(rng.uniform(room.x_min + 0.3, max(room.x_min + 0.31, room.x_max - rw - 0.3)))
        rz = float(rng.uniform(room.z_min + 0.3, max(room.z_min + 0.31, room.z_max - rd - 0.3)))
        panels.append(Panel("rug", ADE20K_ID["rug"], 4, (rx, rx + rw, rz, rz + rd), _color(rng), STRIPES))

    # Furniture: rejection-sample footprints that stay inside the room, off each other,
    # clear of the camera and clear of doors.
    footprints: list[np.ndarray] = []
    for door in (p for p in panels if p.kind == "door"):
        a0, a1 = door.rect[:2]
        if door.surface in (0, 1):
            x = room.x_min if door.surface == 0 else room.x_max
            footprints.append(np.array([[x - 0.9, a0], [x + 0.9, a0], [x + 0.9, a1], [x - 0.9, a1]]))
        else:
            z = room.z_min if door.surface == 2 else room.z_max
            footprints.append(np.array([[a0, z - 0.9], [a1, z - 0.9], [a1, z + 0.9], [a0, z + 0.9]]))
    camera_zone = _rect_corners(0.0, 0.0, cfg.camera_clearance, cfg.camera_clearance, 0.0)
    kinds = list(_KIND_WEIGHTS)
    weights = np.array([_KIND_WEIGHTS[k] for k in kinds])
    boxes: list[Box] = []
    cylinders: list[Cylinder] = []
    for _ in range(int(rng.integers(cfg.furniture[0], cfg.furniture[1] + 1))):
        kind = str(rng.choice(kinds, p=weights / weights.sum()))
        _, len_range, dep_range, h_range, against_wall = _CATALOGUE[kind]
        length, dep, h = rng.uniform(*len_range), rng.uniform(*dep_range), rng.uniform(*h_range)
        h = min(h, room.height - 0.3)
        for _attempt in range(30):
            if against_wall:
                wall = int(rng.integers(4))
                yaw = _WALL_YAW[wall]
                lo, hi = (room.z_min, room.z_max) if wall in (0, 1) else (room.x_min, room.x_max)
                if hi - lo < length + 0.1:
                    continue
                along = float(rng.uniform(lo + length / 2 + 0.05, hi - length / 2 - 0.05))
                off = dep / 2 + 0.01
                cx, cz = {
                    0: (room.x_min + off, along),
                    1: (room.x_max - off, along),
                    2: (along, room.z_min + off),
                    3: (along, room.z_max - off),
                }[wall]
            else:
                yaw = float(rng.uniform(-math.pi, math.pi))
                margin = math.hypot(length, dep) / 2 + 0.05
                if room.x_max - room.x_min < 2 * margin or room.z_max - room.z_min < 2 * margin:
                    break
                cx = float(rng.uniform(room.x_min + margin, room.x_max - margin))
                cz = float(rng.uniform(room.z_min + margin, room.z_max - margin))
            poly = _rect_corners(cx, cz, length / 2, dep / 2, yaw)
            if not _separated(poly, camera_zone, 0.0):
                continue
            if not all(_separated(poly, other, 0.08) for other in footprints):
                continue
            footprints.append(poly)
            b, c = _furnish(kind, rng, cx, cz, float(length), float(dep), float(h), yaw, room.y_floor)
            boxes += b
            cylinders += c
            break

    light = (
        float((room.x_min + room.x_max) / 2 + rng.uniform(-0.5, 0.5)),
        float(room.y_ceiling + 0.3),
        float((room.z_min + room.z_max) / 2 + rng.uniform(-0.5, 0.5)),
    )
    return Scene(
        seed=seed, room=room, boxes=tuple(boxes), cylinders=tuple(cylinders), panels=tuple(panels), light=light
    )
