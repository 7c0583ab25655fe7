"""The procedural tiny world: primitives, colours, asymmetric objects, compositions, captions, dataset rendering.

Importing this package is light (numpy and torch only); trimesh is imported by exports and mesh loading only.
"""
from __future__ import annotations

from .captions import RELATIONS, nearest_prompts, normalize_text, parse_prompt
from .scenes import (
    KINDS,
    Scene,
    all_composition_scenes,
    all_single_scenes,
    asymmetric_scene,
    asymmetric_scenes,
    composition_scene,
    composition_scenes,
    scene_from_key,
    single_scene,
)
from .shapes import ASYMMETRIC_OBJECTS, COLOUR_NAMES, COLOURS, MAX_RADIUS, SHAPE_NAMES, SHAPE_SYNONYMS

__all__ = [
    "ASYMMETRIC_OBJECTS", "COLOUR_NAMES", "COLOURS", "KINDS", "MAX_RADIUS", "RELATIONS", "SHAPE_NAMES",
    "SHAPE_SYNONYMS", "Scene", "all_composition_scenes", "all_single_scenes", "asymmetric_scene",
    "asymmetric_scenes", "composition_scene", "composition_scenes", "nearest_prompts", "normalize_text",
    "parse_prompt", "scene_from_key", "single_scene",
]
