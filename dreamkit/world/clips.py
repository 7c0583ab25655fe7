"""Animated clips of the tiny world: the training data of the tiny video prior (``assets/priors/tiny-video``).

A clip is F frames (8 by default) of one scene of the tiny world — a coloured primitive, an asymmetric object, or a
two-object composition moving as one — doing one of the world's motions (:mod:`dreamkit.world.motion`), seen by one
still camera, rendered by the image dataset's renderer with its background and its random light (one light per
clip). Frame i is at clip time τ_i = τ₀ + i/F with τ₀ ~ U(0, 1/F), the clip times ``dreamkit fit`` samples for a
video prior (:meth:`dreamkit.cameras.CameraSampler.sample` with ``frames``).

Captions: the scene's caption (a random phrasing) + " " + the motion's name — "a red cube bouncing", "a house
spinning"; a still clip is captioned with the plain caption or "… still" (half each).

**Left and right are the viewer's.** The cameras look from any azimuth, and a prior without a camera input cannot
know where the world's +X lies in its image; so a clip's "moving left/right" is drawn in the camera's frame: the
motion's translation is turned by the camera's azimuth about +Y, so "moving left" always goes to the image's left.
**So is a spin's phase**: a spinning object is first turned by the camera's azimuth, so every spinning clip starts
with the object showing the camera the face it shows the world's front camera and turns from there (counter-clockwise
seen from above). With random azimuths the phase of a turn (a cube's silhouette widens and narrows every 90°) is
random, and the clip's condition cannot say what any frame looks like; with it fixed the condition says it, as it
says where a "moving left" object is. For the camera at azimuth 0 (the world's front) this is exactly
:mod:`dreamkit.world.motion`'s world-frame motion (−X, yaw from 0); up, down, bouncing, growing and shrinking do not
depend on the azimuth at all.

Layout written by :func:`build_clip_dataset` (``out_dir``): ``captions.json`` (metadata: frames, resolution,
background, seed, motion weights, kind weights, camera ranges, the scene list, the motions, the flat caption list and
each caption's (scene, motion)) and ``shard_00000.pt`` … (``torch.save`` dicts of plain tensors: ``images`` uint8
[N, F, H, W, 3], ``scene``/``motion``/``caption`` long [N], ``time`` float32 [N, F], ``c2w`` float32 [N, 4, 4],
``fovy``/``elevation``/``azimuth``/``distance`` float32 [N], ``light_dir`` [N, 3], ``ambient``/``diffuse`` [N]).
"""
from __future__ import annotations

import json
import time as _time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..cameras import Cameras, CameraSampler, azimuth_rotation
from .dataset import (DEFAULT_BACKGROUND, Lights, _draw_scenes, render_scene_views, sample_lights,
                      weighted_choice)
from .motion import MOTIONS, Motion, transform_points
from .scenes import Scene, all_single_scenes, asymmetric_scenes, composition_scenes

__all__ = ["CLIP_FRAMES", "CLIP_CAMERA", "DEFAULT_MOTION_WEIGHTS", "DEFAULT_CLIP_KINDS", "clip_captions",
           "clip_scenes", "render_clip", "build_clip_dataset", "load_clip_dataset"]

CLIP_FRAMES = 8
#: a still camera per clip (GUIDANCE_4D.md §6.2): azimuth U(−180, 180), elevation U(0, 30); distance and field of
#: view as ``dreamkit fit``'s defaults
CLIP_CAMERA = {"elevation_range": (0.0, 30.0), "azimuth_range": (-180.0, 180.0), "distance_range": (2.5, 3.0),
               "fovy_range": (35.0, 45.0)}
#: still 15 %, the eight motions share the rest
DEFAULT_MOTION_WEIGHTS = {"still": 0.15, **{m: 0.85 / (len(MOTIONS) - 1) for m in MOTIONS if m != "still"}}
DEFAULT_CLIP_KINDS = {"single": 0.75, "asymmetric": 0.15, "composition": 0.10}


def clip_scenes(n_compositions: int = 32, seed: int = 0) -> list[Scene]:
    """Every single primitive, every asymmetric object and ``n_compositions`` sampled compositions."""
    return all_single_scenes() + asymmetric_scenes() + composition_scenes(n_compositions, seed)


def clip_captions(scene: Scene, motion: str) -> list[str]:
    """Every caption of ``scene`` doing ``motion``: each phrasing + " " + the motion ("still": the plain phrasing
    and the phrasing + " still")."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}")
    if motion == "still":
        return [c for phrase in scene.captions for c in (phrase, f"{phrase} still")]
    return [f"{phrase} {motion}" for phrase in scene.captions]


@torch.no_grad()
def render_clip(scene: Scene, motion: Union[str, Motion], cameras: Cameras, lights: Optional[Lights] = None,
                background: Sequence[float] = DEFAULT_BACKGROUND, ssaa: int = 1,
                viewer_frame: bool = True) -> torch.Tensor:
    """[F, H, W, 3] in [0, 1]: ``scene`` doing ``motion`` at each camera's time (F cameras of one clip).

    ``viewer_frame``: the translation is turned by the first camera's azimuth, so that "moving left" goes to that
    camera's left, and a spinning object's rest orientation is turned by it too, so that every spinning clip starts
    with the object showing the camera the face it shows the world's front camera (the module doc); False renders
    the world-frame motion. ``lights``: one light for the clip
    (default the renderer's fixed light)."""
    motion = motion if isinstance(motion, Motion) else Motion(motion)
    verts, _, _ = scene.mesh()
    if viewer_frame and motion.name == "spinning":  # about +Y through the origin: commutes with the spin itself
        verts = verts @ azimuth_rotation(cameras.azimuth[:1].cpu())[0].T
    moved = transform_points(verts, motion, cameras.time.cpu())  # [F, V, 3]
    if viewer_frame and motion.name != "still":
        shift = motion.transform(cameras.time.cpu())[2]  # [F, 3] the world-frame translation
        turned = shift @ azimuth_rotation(cameras.azimuth[:1].cpu())[0].T
        moved = moved + (turned - shift)[:, None]
    frames = []
    for f in range(len(cameras)):
        light = None if lights is None else Lights({k: v[:1] for k, v in lights.items()})
        rgb, _, _ = render_scene_views(scene, cameras[f:f + 1], background, lights=light, ssaa=ssaa,
                                       verts=moved[f])
        frames.append(rgb[0])
    return torch.stack(frames)


def build_clip_dataset(
    out_dir: Union[str, Path],
    n_clips: int,
    seed: int = 0,
    resolution: int = 32,
    frames: int = CLIP_FRAMES,
    motion_weights: Optional[dict[str, float]] = None,
    kind_weights: Optional[dict[str, float]] = None,
    n_compositions: int = 32,
    shard_size: int = 1024,
    background: Sequence[float] = DEFAULT_BACKGROUND,
    ssaa: int = 1,
    progress: Optional[Callable[[int, int, float], None]] = None,
    num_threads: Optional[int] = 1,
) -> dict:
    """Render ``n_clips`` captioned clips of ``frames`` frames into shards under ``out_dir`` (see the module doc).

    Deterministic for a seed. ``motion_weights`` (default :data:`DEFAULT_MOTION_WEIGHTS`) and ``kind_weights``
    (default :data:`DEFAULT_CLIP_KINDS`) say how often each motion and scene kind is drawn. Returns the metadata
    written to ``captions.json`` plus ``seconds``."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _build(Path(out_dir), n_clips, seed, resolution, frames, motion_weights or DEFAULT_MOTION_WEIGHTS,
                      kind_weights or DEFAULT_CLIP_KINDS, n_compositions, shard_size, background, ssaa, progress)
    finally:
        torch.set_num_threads(previous)


def _build(out_dir, n_clips, seed, resolution, frames, motion_weights, kind_weights, n_compositions, shard_size,
           background, ssaa, progress) -> dict:
    unknown = set(motion_weights) - set(MOTIONS)
    if unknown:
        raise ValueError(f"unknown motions {sorted(unknown)}; the world's motions: {', '.join(MOTIONS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scenes = clip_scenes(n_compositions, seed)
    kinds = [k for k in kind_weights if kind_weights[k] > 0 and any(s.kind == k for s in scenes)]
    captions: list[str] = []
    caption_of: list[dict] = []  # per caption: scene and motion indices
    first: dict[tuple[int, int], tuple[int, int]] = {}  # (scene, motion) → (first caption, count)
    for si, scene in enumerate(scenes):
        for mi, motion in enumerate(MOTIONS):
            texts = clip_captions(scene, motion)
            first[(si, mi)] = (len(captions), len(texts))
            captions.extend(texts)
            caption_of.extend({"scene": si, "motion": mi} for _ in texts)
    generator = torch.Generator().manual_seed(seed)
    sampler = CameraSampler(generator)
    shards, done, start = [], 0, _time.perf_counter()
    for shard_id, first_clip in enumerate(range(0, n_clips, shard_size)):
        n = min(shard_size, n_clips - first_clip)
        scene_idx = _draw_scenes(n, scenes, {k: kind_weights[k] for k in kinds}, generator)
        motion_names, motion_pick = weighted_choice(motion_weights, n, generator)
        motion_idx = torch.tensor([MOTIONS.index(motion_names[k]) for k in motion_pick.tolist()], dtype=torch.long)
        pick = torch.rand(n, generator=generator, dtype=torch.float64)
        caption_idx = torch.empty(n, dtype=torch.long)
        for c in range(n):
            lo, count = first[(int(scene_idx[c]), int(motion_idx[c]))]
            caption_idx[c] = lo + min(int(pick[c] * count), count - 1)
        cams = sampler.sample(n * frames, resolution, resolution, time_range=(0.0, 1.0), frames=frames,
                              **CLIP_CAMERA)
        lights = sample_lights(n, generator)
        images = torch.empty(n, frames, resolution, resolution, 3, dtype=torch.uint8)
        for c in range(n):
            clip_cams = cams[c * frames:(c + 1) * frames]
            rgb = render_clip(scenes[int(scene_idx[c])], MOTIONS[int(motion_idx[c])], clip_cams,
                              lights=lights[c:c + 1], background=background, ssaa=ssaa)
            images[c] = (rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
        heads = torch.arange(n) * frames
        data = {"images": images, "scene": scene_idx, "motion": motion_idx, "caption": caption_idx,
                "time": cams.time.reshape(n, frames).float(), "c2w": cams.c2w[heads].float(),
                "fovy": cams.fovy[heads].float(), "elevation": cams.elevation[heads].float(),
                "azimuth": cams.azimuth[heads].float(), "distance": cams.distance[heads].float(),
                "light_dir": lights["direction"].float(), "ambient": lights["ambient"].float(),
                "diffuse": lights["diffuse"].float()}
        name = f"shard_{shard_id:05d}.pt"
        torch.save(data, out_dir / name)
        shards.append({"file": name, "count": n})
        done += n
        if progress is not None:
            progress(done, n_clips, done / max(_time.perf_counter() - start, 1e-9))
    seconds = _time.perf_counter() - start
    meta = {
        "version": 1, "kind": "clips", "n_clips": done, "frames": frames, "resolution": resolution,
        "background": list(background), "seed": seed, "ssaa": ssaa, "viewer_frame": True, "spin_phase": "viewer",
        "motion_weights": dict(motion_weights), "kind_weights": dict(kind_weights),
        "camera": {k: list(v) for k, v in CLIP_CAMERA.items()}, "time": "tau_i = tau0 + i/F, tau0 ~ U(0, 1/F)",
        "motions": list(MOTIONS), "shards": shards,
        "scenes": [{"key": s.key, "kind": s.kind, "caption": s.caption} for s in scenes],
        "captions": captions, "caption_of": caption_of,
    }
    (out_dir / "captions.json").write_text(json.dumps(meta, indent=1))
    return {**meta, "seconds": seconds}


def load_clip_dataset(data_dir: Union[str, Path]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors concatenated over the shards) of a folder written by :func:`build_clip_dataset`."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "captions.json").read_text())
    if meta.get("kind") != "clips":
        raise ValueError(f"{data_dir} is not a clip dataset (captions.json has no kind 'clips')")
    shards = [torch.load(data_dir / s["file"], weights_only=True) for s in meta["shards"]]
    return meta, {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
