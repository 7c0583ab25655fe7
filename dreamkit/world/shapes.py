"""Primitive shapes, named colours and multi-colour asymmetric objects of the tiny world, built with numpy.

Conventions (see :mod:`dreamkit.cameras`): world +Y up, an object's front faces +Z. Every primitive is a closed,
consistently wound (outward, counter-clockwise seen from outside) triangle mesh whose bounding box is centred at the
origin and which fits in a sphere of radius :data:`MAX_RADIUS`. Multi-part objects are concatenations of closed parts
that share no vertices, so each part keeps exactly one colour and per-vertex colours reproduce flat face colours.

A :class:`Part` is ``(vertices [V, 3] float64, faces [F, 3] int64, rgb (3 ints in 0..255))``. Nothing here imports
trimesh, so ``import dreamkit.world`` stays light.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "MAX_RADIUS",
    "Colour",
    "COLOURS",
    "COLOUR_NAMES",
    "SHAPES",
    "SHAPE_NAMES",
    "SHAPE_SYNONYMS",
    "Part",
    "AsymmetricObject",
    "ASYMMETRIC_OBJECTS",
    "shape_mesh",
    "asymmetric_parts",
    "parts_to_arrays",
    "normalize_parts",
]

#: Every shape and object fits in this sphere around the origin (the training cameras stand 2.5-3 units away).
MAX_RADIUS = 0.70


class Part(NamedTuple):
    vertices: np.ndarray  # [V, 3] float64
    faces: np.ndarray  # [F, 3] int64
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Colour:
    """A named colour: 8-bit sRGB (exact through PLY/GLB) and its HSV hue in degrees."""

    name: str
    rgb: tuple[int, int, int]

    @property
    def rgb01(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.rgb)  # type: ignore[return-value]

    @property
    def hue(self) -> float:
        return 360.0 * colorsys.rgb_to_hsv(*self.rgb01)[0]


# Saturated, mid-to-high value colours with hues at least 25° apart, all far from the light-grey background (0.9)
# and still recognisable at the darkest shade of the dataset renderer (ambient ≈ 0.3). White and black are left out
# on purpose: white disappears against the light-grey background and both are hue-less.
COLOURS: dict[str, Colour] = {c.name: c for c in (
    Colour("red", (220, 40, 40)),       # hue   0
    Colour("orange", (245, 135, 25)),   # hue  30
    Colour("yellow", (240, 215, 30)),   # hue  52
    Colour("green", (50, 170, 60)),     # hue 124
    Colour("cyan", (30, 185, 200)),     # hue 185
    Colour("blue", (40, 80, 225)),      # hue 227
    Colour("purple", (140, 55, 205)),   # hue 274
    Colour("pink", (240, 100, 185)),    # hue 324
)}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


# ---------------------------------------------------------------------------------------------------------------
# Mesh builders (closed, outward wound)
# ---------------------------------------------------------------------------------------------------------------

def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip every face if the (consistently wound) closed mesh encloses a negative volume."""
    faces = np.asarray(faces, np.int64)
    if _signed_volume(vertices, faces) < 0:
        faces = faces[:, ::-1].copy()
    return np.asarray(vertices, np.float64), faces


def revolve(profile: Sequence[tuple[float, float]], segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +Y of an open profile [(r, y), ...] that starts and ends on the axis (r = 0).

    The two axis points become single pole vertices, so the result is closed (no seams, no duplicate vertices).
    """
    profile = [(0.0 if abs(r) < 1e-9 else float(r), float(y)) for r, y in profile]
    if profile[0][0] != 0.0 or profile[-1][0] != 0.0 or len(profile) < 3:
        raise ValueError("profile must start and end on the axis and have an interior point")
    rings = profile[1:-1]
    theta = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
    verts = [np.array([[0.0, profile[0][1], 0.0]])]
    for r, y in rings:
        verts.append(np.stack([r * np.sin(theta), np.full(segments, y), r * np.cos(theta)], -1))
    verts.append(np.array([[0.0, profile[-1][1], 0.0]]))
    vertices = np.concatenate(verts)
    top = len(vertices) - 1
    j = np.arange(segments)
    jn = (j + 1) % segments
    faces = [np.stack([np.zeros(segments, np.int64), 1 + jn, 1 + j], -1)]  # bottom fan
    for k in range(len(rings) - 1):
        a, b = 1 + k * segments, 1 + (k + 1) * segments
        faces.append(np.stack([a + j, a + jn, b + jn], -1))
        faces.append(np.stack([a + j, b + jn, b + j], -1))
    last = 1 + (len(rings) - 1) * segments
    faces.append(np.stack([np.full(segments, top), last + j, last + jn], -1))  # top fan
    return _outward(vertices, np.concatenate(faces))


def revolve_loop(loop: Sequence[tuple[float, float]], segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about +Y of a closed profile loop [(r, y), ...] with r > 0 (a torus-like solid)."""
    loop = np.asarray(loop, np.float64)
    n = len(loop)
    theta = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
    r, y = loop[:, 0][:, None], loop[:, 1][:, None]
    vertices = np.stack([r * np.sin(theta), np.broadcast_to(y, (n, segments)),
                         r * np.cos(theta)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n), np.arange(segments), indexing="ij")
    a = i * segments + j
    b = i * segments + (j + 1) % segments
    c = ((i + 1) % n) * segments + (j + 1) % segments
    d = ((i + 1) % n) * segments + j
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return _outward(vertices, faces)


def box(lo: Sequence[float], hi: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box from corner ``lo`` to corner ``hi``."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
    vertices = lo + corners * (hi - lo)
    # index = 4x + 2y + z; two triangles per side
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))], np.int64)
    return _outward(vertices, faces)


def pyramid(half_base: float, half_height: float) -> tuple[np.ndarray, np.ndarray]:
    """Square pyramid, base on y = -half_height, apex at y = +half_height."""
    h, y = half_base, half_height
    vertices = np.array([[-h, -y, -h], [h, -y, -h], [h, -y, h], [-h, -y, h], [0.0, y, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]], np.int64)
    return _outward(vertices, faces)


def sphere(radius: float, segments: int = 24, rings: int = 12, centre=(0.0, 0.0, 0.0)):
    phi = np.linspace(0.0, math.pi, rings + 1)
    v, f = revolve([(radius * math.sin(p), -radius * math.cos(p)) for p in phi], segments)
    return v + np.asarray(centre, np.float64), f


def cylinder(radius: float, y0: float, y1: float, segments: int = 32):
    return revolve([(0.0, y0), (radius, y0), (radius, y1), (0.0, y1)], segments)


def cone(radius: float, y0: float, y1: float, segments: int = 32):
    return revolve([(0.0, y0), (radius, y0), (0.0, y1)], segments)


def torus(major: float, minor: float, segments: int = 32, tube_segments: int = 12):
    a = np.linspace(0.0, 2 * math.pi, tube_segments, endpoint=False)
    return revolve_loop(list(zip(major + minor * np.cos(a), minor * np.sin(a))), segments)


def capsule(radius: float, half_height: float, segments: int = 24, cap_rings: int = 6):
    """Pill along Y: a cylinder of ``radius`` with hemispherical caps; total extent ±``half_height``."""
    c = half_height - radius
    phi = np.linspace(0.0, math.pi / 2, cap_rings + 1)
    bottom = [(radius * math.sin(p), -c - radius * math.cos(p)) for p in phi]
    top = [(radius * math.cos(p), c + radius * math.sin(p)) for p in phi]
    return revolve(bottom + top, segments)


def rotate_x(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about +X (right-handed): +Y goes to +Z at +90°."""
    t = math.radians(degrees)
    rot = np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])
    return vertices @ rot.T


def rotate_z(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about +Z (right-handed): +X goes to +Y at +90°."""
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    return vertices @ rot.T


def _centred(mesh: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    v, f = mesh
    lo, hi = v.min(0), v.max(0)
    return v - (lo + hi) / 2, f


def _ring() -> tuple[np.ndarray, np.ndarray]:
    # A flat annulus with a rectangular cross-section, standing upright in the XY plane (its hole faces ±Z).
    outer, inner, half_thickness = 0.62, 0.46, 0.06
    v, f = revolve_loop([(inner, -half_thickness), (outer, -half_thickness), (outer, half_thickness),
                         (inner, half_thickness)], segments=40)
    return rotate_x(v, 90.0), f


# Each primitive: fixed proportions chosen so that silhouettes differ from any view (tall cone vs squat pyramid, tall
# capsule vs squat cylinder, flat torus vs upright thin ring); all centred and inside MAX_RADIUS.
SHAPES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "cube": lambda: box((-0.37, -0.37, -0.37), (0.37, 0.37, 0.37)),
    "sphere": lambda: sphere(0.55, segments=32, rings=16),
    "cylinder": lambda: cylinder(0.52, -0.27, 0.27, segments=40),
    "cone": lambda: cone(0.40, -0.55, 0.55, segments=40),
    "torus": lambda: torus(0.42, 0.18, segments=40, tube_segments=16),
    "pyramid": lambda: pyramid(0.43, 0.33),
    "capsule": lambda: capsule(0.24, 0.65, segments=32, cap_rings=8),
    "ring": _ring,
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)

#: Other nouns accepted in captions for a shape (the canonical noun is the key).
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cube": ("box", "block"),
    "sphere": ("ball",),
    "cylinder": ("drum",),
    "cone": (),
    "torus": ("donut", "doughnut"),
    "pyramid": ("square pyramid",),
    "capsule": ("pill",),
    "ring": ("hoop",),
}


@lru_cache(maxsize=None)
def _shape_mesh_cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    v, f = _centred(SHAPES[name]())
    v.setflags(write=False)
    f.setflags(write=False)
    return v, f


def shape_mesh(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] float64, faces [F, 3] int64) of primitive ``name``, bounding box centred at the origin.

    The arrays are cached and read-only; copy before modifying.
    """
    if name not in SHAPES:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(SHAPE_NAMES)}")
    return _shape_mesh_cached(name)


# ---------------------------------------------------------------------------------------------------------------
# Multi-part objects
# ---------------------------------------------------------------------------------------------------------------

def parts_to_arrays(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate parts (no shared vertices) → vertices [V, 3], faces [F, 3], face colours [F, 3] uint8."""
    vertices, faces, colours, offset = [], [], [], 0
    for v, f, rgb in parts:
        vertices.append(np.asarray(v, np.float64))
        faces.append(np.asarray(f, np.int64) + offset)
        colours.append(np.tile(np.asarray(rgb, np.uint8), (len(f), 1)))
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(colours)


def normalize_parts(parts: Sequence[Part], radius: float = 0.65) -> list[Part]:
    """Translate the parts' joint bounding box to the origin and scale them to fit a sphere of ``radius``."""
    allv = np.concatenate([p.vertices for p in parts])
    centre = (allv.min(0) + allv.max(0)) / 2
    scale = radius / np.linalg.norm(allv - centre, axis=1).max()
    return [Part((p.vertices - centre) * scale, p.faces, p.rgb) for p in parts]


SNOW = (236, 240, 248)
COAL = (30, 30, 35)
CARROT = (245, 120, 20)
SCARF = (200, 30, 40)
MUG_BLUE = (45, 95, 210)
BADGE_YELLOW = (250, 215, 30)
COFFEE = (80, 45, 20)
CAR_RED = (210, 35, 35)
GLASS = (110, 185, 240)
TYRE = (35, 35, 40)
HEADLIGHT = (255, 230, 60)
TAILLIGHT = (120, 10, 10)


def _snowman() -> list[Part]:
    nose_v, nose_f = cone(0.06, 0.0, 0.24, segments=16)
    nose_v = rotate_x(nose_v, 90.0) + np.array([0.0, 0.36, 0.12])  # points along +Z out of the head
    parts = [
        Part(*sphere(0.28, centre=(0, -0.34, 0)), SNOW),
        Part(*sphere(0.21, centre=(0, 0.06, 0)), SNOW),
        Part(*sphere(0.155, centre=(0, 0.36, 0)), SNOW),
        Part(nose_v, nose_f, CARROT),
        Part(*torus(0.15, 0.035, segments=24, tube_segments=8), SCARF),
        Part(*cylinder(0.17, 0.48, 0.50, segments=24), COAL),  # hat brim
        Part(*cylinder(0.105, 0.49, 0.64, segments=24), COAL),  # hat crown
    ]
    parts[4] = Part(parts[4].vertices + np.array([0.0, 0.215, 0.0]), parts[4].faces, SCARF)
    for x in (-0.055, 0.055):  # eyes
        parts.append(Part(*sphere(0.022, 8, 4, centre=(x, 0.40, 0.14)), COAL))
    for y in (0.0, 0.12):  # buttons on the front of the middle ball
        z = math.sqrt(max(0.21 ** 2 - (y - 0.06) ** 2, 0.0))
        parts.append(Part(*sphere(0.025, 8, 4, centre=(0, y, z)), COAL))
    return parts


def _mug() -> list[Part]:
    badge_z = math.sqrt(0.34 ** 2 - 0.12 ** 2) - 0.01  # just inside the curved wall at the badge's edges
    return [
        Part(*cylinder(0.34, -0.34, 0.34, segments=40), MUG_BLUE),
        Part(*cylinder(0.29, 0.34, 0.355, segments=40), COFFEE),  # coffee surface, seen from above
        # The handle on the +X side, a C of three boxes.
        Part(*box((0.30, 0.14, -0.05), (0.56, 0.22, 0.05)), MUG_BLUE),
        Part(*box((0.30, -0.22, -0.05), (0.56, -0.14, 0.05)), MUG_BLUE),
        Part(*box((0.48, -0.22, -0.05), (0.56, 0.22, 0.05)), MUG_BLUE),
        # A yellow badge on the front (+Z).
        Part(*box((-0.12, -0.13, badge_z), (0.12, 0.13, 0.375)), BADGE_YELLOW),
    ]


def _car() -> list[Part]:
    parts = [
        Part(*box((-0.30, -0.14, -0.60), (0.30, 0.10, 0.60)), CAR_RED),  # body, long along Z
        Part(*box((-0.26, 0.10, -0.32), (0.26, 0.30, 0.12)), GLASS),  # cabin, set back from the front
        Part(*box((-0.25, -0.06, 0.595), (-0.12, 0.04, 0.625)), HEADLIGHT),  # headlights on the front (+Z)
        Part(*box((0.12, -0.06, 0.595), (0.25, 0.04, 0.625)), HEADLIGHT),
        Part(*box((-0.25, -0.04, -0.62), (-0.14, 0.03, -0.595)), TAILLIGHT),
        Part(*box((0.14, -0.04, -0.62), (0.25, 0.03, -0.595)), TAILLIGHT),
    ]
    for x in (-0.33, 0.33):
        for z in (-0.36, 0.36):
            v, f = cylinder(0.14, -0.045, 0.045, segments=20)
            v = rotate_z(v, 90.0) + np.array([x, -0.16, z])  # axle along X
            parts.append(Part(v, f, TYRE))
    return parts


# The house of scripts/make_assets.py (the shipped assets/meshes/house.ply), rebuilt here without trimesh.
HOUSE_BODY = (240, 196, 90)  # warm yellow walls
HOUSE_ROOF = (196, 40, 32)  # red roof
HOUSE_DOOR = (90, 50, 25)  # dark brown door (front, +Z)
HOUSE_WINDOW = (110, 185, 240)  # light blue glass
HOUSE_CHIMNEY = (100, 105, 130)  # slate grey-blue chimney


def _house() -> list[Part]:
    half_x, height, half_z = 0.40, 0.50, 0.30
    eave_x, eave_z, ridge_y = 0.46, 0.36, 0.82
    # Roof: the two slopes and the soffit under them, a prism open at its ends (as the shipped asset).
    roof_v = np.array([(-eave_x, height, eave_z), (eave_x, height, eave_z), (-eave_x, height, -eave_z),
                       (eave_x, height, -eave_z), (-eave_x, ridge_y, 0.0), (eave_x, ridge_y, 0.0)])
    roof_f = np.array([(0, 1, 5), (0, 5, 4), (2, 4, 5), (2, 5, 3), (0, 2, 3), (0, 3, 1)])
    roof_f = _wind_outward(roof_v, roof_f)
    # Gables: the wall ends under the roof on -X and +X (pentagons, one-sided, facing outwards).
    wall_top = height + (ridge_y - height) * (1 - half_z / eave_z)
    gable_parts = []
    for sx in (-1.0, 1.0):
        x = sx * half_x
        v = np.array([(x, height, half_z), (x, height, -half_z), (x, wall_top, -half_z), (x, ridge_y, 0.0),
                      (x, wall_top, half_z)])
        f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4]])
        if np.cross(v[1] - v[0], v[2] - v[0])[0] * sx < 0:
            f = f[:, ::-1].copy()
        gable_parts.append(Part(v, f, HOUSE_BODY))
    return [
        Part(*box((-half_x, 0.0, -half_z), (half_x, height, half_z)), HOUSE_BODY),
        *gable_parts,
        Part(roof_v, roof_f, HOUSE_ROOF),
        Part(*box((-0.24, 0.0, half_z - 0.01), (-0.08, 0.32, half_z + 0.025)), HOUSE_DOOR),  # door, left of centre
        Part(*box((0.06, 0.20, half_z - 0.01), (0.26, 0.38, half_z + 0.015)), HOUSE_WINDOW),  # front window
        Part(*box((half_x - 0.01, 0.18, -0.12), (half_x + 0.015, 0.38, 0.12)), HOUSE_WINDOW),  # +X side window only
        Part(*box((0.16, 0.55, -0.20), (0.28, 0.95, -0.08)), HOUSE_CHIMNEY),  # chimney: +X, back slope
    ]


def _wind_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Orient each face of a convex part away from the part's centroid."""
    faces = np.asarray(faces, np.int64).copy()
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (normal * (tri.mean(1) - vertices.mean(0))).sum(-1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return faces


@dataclass(frozen=True)
class AsymmetricObject:
    """A multi-colour object with a clear front (+Z).

    ``front_feature`` is the colour of a part seen from the front only (used to test orientation); ``captions``
    are its phrasings, the first canonical. Parts are scaled into a sphere of radius 0.65 (0.68 for the house, as
    the shipped asset).
    """

    name: str
    build: Callable[[], list[Part]]
    front_feature: tuple[int, int, int]
    captions: tuple[str, ...]
    #: every part is closed and wound outwards (back faces may be culled); the house has one-sided gables
    closed: bool = True


ASYMMETRIC_OBJECTS: dict[str, AsymmetricObject] = {o.name: o for o in (
    AsymmetricObject("house", _house, HOUSE_DOOR, (
        "a house", "a house with a door", "a small house with a red roof", "a yellow house with a red roof",
        "a 3D render of a house", "a photo of a house"), closed=False),
    AsymmetricObject("snowman", _snowman, CARROT, (
        "a snowman", "a snowman with a carrot nose", "a snowman wearing a black hat", "a snowman with a red scarf",
        "a 3D render of a snowman", "a photo of a snowman")),
    AsymmetricObject("mug", _mug, BADGE_YELLOW, (
        "a mug", "a blue mug", "a blue mug with a handle", "a coffee mug", "a blue mug with a yellow badge",
        "a 3D render of a mug", "a photo of a mug")),
    AsymmetricObject("car", _car, HEADLIGHT, (
        "a car", "a red car", "a toy car", "a small red car with yellow headlights",
        "a 3D render of a car", "a photo of a car")),
)}


@lru_cache(maxsize=None)
def asymmetric_parts(name: str) -> tuple[Part, ...]:
    """The parts of asymmetric object ``name``, centred and scaled to radius 0.65 (front towards +Z)."""
    if name not in ASYMMETRIC_OBJECTS:
        raise KeyError(f"unknown object {name!r}; known: {', '.join(ASYMMETRIC_OBJECTS)}")
    return tuple(normalize_parts(ASYMMETRIC_OBJECTS[name].build(), 0.68 if name == "house" else 0.65))
