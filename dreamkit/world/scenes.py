"""Scenes of the tiny world: one coloured primitive, one asymmetric object, or two primitives in a relation.

A :class:`Scene` is a small frozen value (hashable, comparable): what it shows and how it is captioned. Its ground
truth mesh comes from :meth:`Scene.mesh` (tensors for the rasterizer) or :meth:`Scene.export` (a coloured PLY or
GLB that other tools open and :func:`dreamkit.world.meshes.load_colored_mesh` reads back exactly).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .captions import RELATIONS, composition_captions, single_captions
from .shapes import (
    ASYMMETRIC_OBJECTS,
    COLOUR_NAMES,
    COLOURS,
    SHAPE_NAMES,
    Part,
    asymmetric_parts,
    normalize_parts,
    parts_to_arrays,
    shape_mesh,
)

__all__ = [
    "KINDS",
    "Scene",
    "single_scene",
    "asymmetric_scene",
    "composition_scene",
    "all_single_scenes",
    "asymmetric_scenes",
    "all_composition_scenes",
    "composition_scenes",
    "scene_from_key",
]

KINDS = ("single", "asymmetric", "composition")

#: gap between the two objects of a "next to" composition, in the primitives' own units (before fitting)
_COMPOSITION_GAP = 0.08
#: a composition's two objects are scaled together to fit a sphere of this radius
SCENE_RADIUS = 0.65


@dataclass(frozen=True)
class Scene:
    """One scene of the tiny world.

    Attributes:
        kind: "single" | "asymmetric" | "composition".
        shapes: primitive names ("cube", ...) — one for single, two (A, B) for composition — or the object's name
            ("house", ...) for asymmetric.
        colours: colour names matching ``shapes`` (empty for asymmetric objects, which are multi-coloured).
        relation: None, or "on_top_of" / "next_to" for compositions (A <relation> B).
        caption: the canonical caption.
        captions: every phrasing (the canonical one first).
    """

    kind: str
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    relation: Optional[str]
    caption: str
    captions: tuple[str, ...]

    @property
    def key(self) -> str:
        """A stable identifier, e.g. ``single/red/cube``, ``asymmetric/house``,
        ``composition/red/cube/on_top_of/blue/sphere`` (see :func:`scene_from_key`)."""
        if self.kind == "single":
            return f"single/{self.colours[0]}/{self.shapes[0]}"
        if self.kind == "asymmetric":
            return f"asymmetric/{self.shapes[0]}"
        return (f"composition/{self.colours[0]}/{self.shapes[0]}/{self.relation}/"
                f"{self.colours[1]}/{self.shapes[1]}")

    @property
    def closed(self) -> bool:
        """Every part is closed and wound outwards, so renderers may cull back faces."""
        return self.kind != "asymmetric" or ASYMMETRIC_OBJECTS[self.shapes[0]].closed

    def parts(self) -> list[Part]:
        """The scene's closed parts (numpy), each one colour, placed in the world (front towards +Z)."""
        return list(_scene_parts(self))

    def mesh(self, device: Union[str, torch.device] = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """verts [V, 3] float32, faces [F, 3] long, face_colors [F, 3] float32 in [0, 1] (flat colours).

        Parts share no vertices, so every vertex has the colour of its faces.
        """
        return tuple(t.to(device, copy=True) for t in _scene_tensors(self))  # type: ignore[return-value]

    def export(self, path: Union[str, Path]) -> Path:
        """Write the ground-truth coloured mesh: ``.ply`` (binary, vertex colours) or ``.glb`` (COLOR_0)."""
        import trimesh  # exporting is the only place that needs it

        path = Path(path)
        verts, faces, colours = parts_to_arrays(self.parts())
        vertex_rgba = np.full((len(verts), 4), 255, np.uint8)
        vertex_rgba[faces.reshape(-1), :3] = np.repeat(colours, 3, axis=0)
        mesh = trimesh.Trimesh(verts.astype(np.float32), faces, vertex_colors=vertex_rgba, process=False)
        suffix = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".ply":
            path.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False))
        elif suffix == ".glb":
            path.write_bytes(mesh.export(file_type="glb"))
        else:
            raise ValueError(f"unsupported mesh format {suffix!r}; use .ply or .glb")
        return path


@lru_cache(maxsize=None)
def single_scene(shape: str, colour: str) -> Scene:
    if shape not in SHAPE_NAMES or colour not in COLOURS:
        raise KeyError(f"unknown shape/colour {shape!r}/{colour!r}")
    captions = single_captions(shape, colour)
    return Scene("single", (shape,), (colour,), None, captions[0], captions)


@lru_cache(maxsize=None)
def asymmetric_scene(name: str) -> Scene:
    captions = ASYMMETRIC_OBJECTS[name].captions
    return Scene("asymmetric", (name,), (), None, captions[0], captions)


@lru_cache(maxsize=None)
def composition_scene(shape_a: str, colour_a: str, relation: str, shape_b: str, colour_b: str) -> Scene:
    for shape, colour in ((shape_a, colour_a), (shape_b, colour_b)):
        if shape not in SHAPE_NAMES or colour not in COLOURS:
            raise KeyError(f"unknown shape/colour {shape!r}/{colour!r}")
    if relation not in RELATIONS:
        raise KeyError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    if (shape_a, colour_a) == (shape_b, colour_b):
        raise ValueError("a composition needs two different objects")
    captions = composition_captions(shape_a, colour_a, relation, shape_b, colour_b)
    return Scene("composition", (shape_a, shape_b), (colour_a, colour_b), relation, captions[0], captions)


def scene_from_key(key: str) -> Scene:
    """Inverse of :attr:`Scene.key`."""
    parts = key.split("/")
    if parts[0] == "single" and len(parts) == 3:
        return single_scene(parts[2], parts[1])
    if parts[0] == "asymmetric" and len(parts) == 2:
        return asymmetric_scene(parts[1])
    if parts[0] == "composition" and len(parts) == 6:
        return composition_scene(parts[2], parts[1], parts[3], parts[5], parts[4])
    raise KeyError(f"not a scene key: {key!r}")


def all_single_scenes() -> list[Scene]:
    """Every (colour, shape) pair: len(SHAPE_NAMES) × len(COLOUR_NAMES) scenes, shape-major."""
    return [single_scene(s, c) for s in SHAPE_NAMES for c in COLOUR_NAMES]


def asymmetric_scenes() -> list[Scene]:
    return [asymmetric_scene(name) for name in ASYMMETRIC_OBJECTS]


def all_composition_scenes() -> list[Scene]:
    """Every ordered pair of distinct coloured primitives in every relation (64·63·2 = 8064 scenes)."""
    objects = [(s, c) for s in SHAPE_NAMES for c in COLOUR_NAMES]
    return [composition_scene(sa, ca, rel, sb, cb)
            for rel in RELATIONS for (sa, ca) in objects for (sb, cb) in objects if (sa, ca) != (sb, cb)]


def composition_scenes(n: Optional[int] = None, seed: int = 0) -> list[Scene]:
    """``n`` compositions drawn without replacement (deterministic for a seed); all of them when ``n`` is None."""
    scenes = all_composition_scenes()
    if n is None or n >= len(scenes):
        return scenes
    return random.Random(seed).sample(scenes, n)


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------

def _primitive_part(shape: str, colour: str) -> Part:
    v, f = shape_mesh(shape)
    return Part(np.array(v), np.array(f), COLOURS[colour].rgb)


def _moved(part: Part, offset) -> Part:
    return Part(part.vertices + np.asarray(offset, np.float64), part.faces, part.rgb)


@lru_cache(maxsize=256)
def _scene_parts(scene: Scene) -> tuple[Part, ...]:
    if scene.kind == "single":
        return (_primitive_part(scene.shapes[0], scene.colours[0]),)
    if scene.kind == "asymmetric":
        return asymmetric_parts(scene.shapes[0])
    a = _primitive_part(scene.shapes[0], scene.colours[0])
    b = _primitive_part(scene.shapes[1], scene.colours[1])
    a_lo, a_hi = a.vertices.min(0), a.vertices.max(0)
    b_lo, b_hi = b.vertices.min(0), b.vertices.max(0)
    if scene.relation == "on_top_of":
        # A rests on B's top, both centred on the vertical axis.
        a = _moved(a, (0.0, b_hi[1] - a_lo[1], 0.0))
    else:
        # Side by side along X, bottoms level, A on the left seen from the front (at -X), a small gap between.
        a = _moved(a, (b_lo[0] - _COMPOSITION_GAP - a_hi[0], b_lo[1] - a_lo[1], 0.0))
    return tuple(normalize_parts([a, b], SCENE_RADIUS))


@lru_cache(maxsize=1024)
def _scene_tensors(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    verts, faces, colours = parts_to_arrays(_scene_parts(scene))
    return (torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.long),
            torch.as_tensor(colours / 255.0, dtype=torch.float32))
