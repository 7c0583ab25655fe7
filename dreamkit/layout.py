"""A scene layout for compositional generation: boxes, each with the prompt of the part that lives in it.

Given in a recipe as ``layout: [{prompt: "a red cube", box_min: [x, y, z], box_max: [x, y, z]}, ...]`` (the prompt of
the whole scene stays ``prompt``), or ``layout: auto``: derived from a tiny-world composition caption ("a red cube on
top of a blue sphere", "a green cone next to a yellow torus"). The derived layout knows the arrangement the caption
states, not the objects' sizes — as the layout an LLM writes for SemanticSDS (Yang et al. 2024) or GALA3D: the scene's
bounding ball is split evenly along the relation's axis (on top of: y, A above B; next to: x, A at −x, as the world
places it), the two halves overlapping by ``AUTO_OVERLAP`` of the radius so that an object larger than its half is not
cut at the seam.

Gaussians take the group id of the box they start in (``representation.init=layout``); the semantic SDS
(:mod:`dreamkit.guidance.semantic`) masks each part's SDS with its group's render; a containment penalty
(``loss.lambda_containment``) keeps each group in its box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

#: the two halves of an auto layout overlap by this fraction of the scene radius
AUTO_OVERLAP = 0.15
#: the auto layout's boxes span this fraction of the scene radius across the relation's axis
AUTO_WIDTH = 0.85


@dataclass(frozen=True)
class LayoutBox:
    prompt: str
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]

    @property
    def centre(self) -> torch.Tensor:
        return (torch.tensor(self.box_min) + torch.tensor(self.box_max)) / 2

    @property
    def half(self) -> torch.Tensor:
        return (torch.tensor(self.box_max) - torch.tensor(self.box_min)) / 2


def auto_layout(prompt: str) -> list[LayoutBox]:
    """The layout of a tiny-world composition caption (see the module docstring); ConfigError for any other
    prompt, naming the captions it understands."""
    from .world.captions import parse_prompt
    from .world.scenes import SCENE_RADIUS

    scene = parse_prompt(prompt)
    if scene is None or scene.kind != "composition":
        raise ConfigError(f"layout=auto derives the boxes from a tiny-world composition caption, and {prompt!r} is "
                          "not one — write e.g. prompt=\"a red cube on top of a blue sphere\" or \"a green cone next "
                          "to a yellow torus\", or give the boxes: layout=[{prompt: ..., box_min: [x, y, z], "
                          "box_max: [x, y, z]}, ...]")
    r, m, w = SCENE_RADIUS, AUTO_OVERLAP * SCENE_RADIUS, AUTO_WIDTH * SCENE_RADIUS
    part_prompts = [_single_caption(shape, colour) for shape, colour in zip(scene.shapes, scene.colours)]
    if scene.relation == "on_top_of":
        a = LayoutBox(part_prompts[0], (-w, -m, -w), (w, r, w))
        b = LayoutBox(part_prompts[1], (-w, -r, -w), (w, m, w))
    else:  # next_to: A on the left (−x), bottoms level
        a = LayoutBox(part_prompts[0], (-r, -w, -w), (m, w, w))
        b = LayoutBox(part_prompts[1], (-m, -w, -w), (r, w, w))
    return [a, b]


def _single_caption(shape: str, colour: str) -> str:
    from .world.scenes import single_scene

    return single_scene(shape, colour).caption


def resolve_layout(cfg: Any) -> list[LayoutBox]:
    """The recipe's ``layout`` as boxes ([] when it has none). Raises ConfigError naming the entry and the fix."""
    raw = cfg.get("layout") if hasattr(cfg, "get") else getattr(cfg, "layout", None)
    if raw is None or raw == [] or (isinstance(raw, str) and raw.strip().lower() in ("", "none")):
        return []
    if isinstance(raw, str):
        if raw.strip().lower() != "auto":
            raise ConfigError(f"layout={raw!r} — use auto (boxes from a tiny-world composition caption) or a list "
                              "of boxes [{prompt: ..., box_min: [x, y, z], box_max: [x, y, z]}, ...]")
        return auto_layout(str(cfg.prompt))
    try:
        from omegaconf import OmegaConf

        entries = OmegaConf.to_container(raw, resolve=True) if not isinstance(raw, list) else raw
    except Exception:
        entries = raw
    if not isinstance(entries, list):
        raise ConfigError(f"layout must be auto or a list of boxes, got {raw!r}")
    boxes = []
    for i, entry in enumerate(entries):
        where = f"layout[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping {{prompt, box_min, box_max}}, got {entry!r}")
        unknown = set(entry) - {"prompt", "box_min", "box_max"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} — a box has prompt, box_min, "
                              "box_max")
        prompt = str(entry.get("prompt", "")).strip()
        if not prompt:
            raise ConfigError(f"{where}.prompt is empty — each box needs the prompt of the part inside it")
        lo, hi = entry.get("box_min"), entry.get("box_max")
        for key, value in (("box_min", lo), ("box_max", hi)):
            if not isinstance(value, (list, tuple)) or len(value) != 3:
                raise ConfigError(f"{where}.{key} must be three numbers [x, y, z], got {value!r}")
        lo, hi = tuple(float(v) for v in lo), tuple(float(v) for v in hi)
        if any(a >= b for a, b in zip(lo, hi)):
            raise ConfigError(f"{where}: box_min {list(lo)} must be below box_max {list(hi)} on every axis")
        boxes.append(LayoutBox(prompt, lo, hi))
    return boxes


def group_of_points(points: torch.Tensor, boxes: list[LayoutBox]) -> torch.Tensor:
    """[N, 3] → [N] index of the box each point lies in (the first one, where boxes overlap); −1 outside all."""
    group = torch.full((points.shape[0],), -1, dtype=torch.long)
    for k in reversed(range(len(boxes))):
        lo = torch.tensor(boxes[k].box_min, dtype=points.dtype)
        hi = torch.tensor(boxes[k].box_max, dtype=points.dtype)
        inside = ((points >= lo) & (points <= hi)).all(-1)
        group = torch.where(inside, torch.full_like(group, k), group)
    return group


def containment_penalty(means: torch.Tensor, group: torch.Tensor, centres: torch.Tensor,
                        halves: torch.Tensor) -> torch.Tensor:
    """mean_i Σ_axes relu(|μ_i − c_g(i)| − h_g(i))²: zero while every Gaussian's mean is inside its group's box
    (SemanticSDS's ``restriction_bbox``; the squared hinge of dreamkit's reference notes §4.1)."""
    excess = ((means - centres[group]).abs() - halves[group]).clamp_min(0)
    return (excess * excess).sum(-1).mean()
