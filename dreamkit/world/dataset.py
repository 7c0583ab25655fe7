"""Rendering the tiny world into a captioned image dataset (for training tiny text-to-image / multi-view priors).

Images are flat-coloured Lambertian renders of :class:`~dreamkit.world.scenes.Scene` meshes, the same shading model
as :func:`dreamkit.render.raster.render_mesh_colors` (``ambient + diffuse·|n·l|`` with face normals and a world-space
light) but with a random light per image, drawn from a seeded generator. Cameras come from the same distribution as
``dreamkit fit`` (:class:`~dreamkit.config.CameraConfig` defaults through :class:`~dreamkit.cameras.CameraSampler`).

Dataset layout written by :func:`build_dataset` (``out_dir``):

* ``captions.json`` — metadata: resolution, background, seed, ``multiview``, shard list, camera ranges, light
  ranges, the scene list (key, kind, canonical caption, indices of its captions) and the flat caption list.
* ``shard_00000.pt`` … — ``torch.save`` dicts. Single-view: ``images`` uint8 [N, H, W, 3], ``scene`` long [N]
  (index into ``scenes``), ``caption`` long [N] (index into ``captions``, a random phrasing of the scene),
  ``elevation``/``azimuth``/``distance``/``fovy`` float32 [N] (degrees / scene units), ``c2w`` float32 [N, 4, 4]
  (OpenCV camera-to-world), ``light_dir`` float32 [N, 3], ``ambient``/``diffuse`` float32 [N]. Multi-view: the same
  keys with a leading group axis, ``images`` [G, 4, H, W, 3], per-view tensors [G, 4, ...], and ``scene``,
  ``caption``, ``light_dir``, ``ambient``, ``diffuse`` per group [G, ...] (one light for the 4 views).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..cameras import Cameras, CameraSampler
from ..config import CameraConfig
from ..render.raster import _visibility, face_normals
from ..schedule import range_at
from .scenes import Scene, all_single_scenes, asymmetric_scenes, composition_scenes

__all__ = [
    "DEFAULT_BACKGROUND",
    "Lights",
    "sample_lights",
    "sample_training_cameras",
    "sample_multiview_cameras",
    "render_scene_views",
    "dataset_scenes",
    "build_dataset",
    "load_shard",
]

DEFAULT_BACKGROUND = (0.9, 0.9, 0.9)
#: ranges of the random light: elevation of the direction towards the light (degrees above the horizon), ambient
#: and diffuse weights (their sum is the brightest shade, at most 1.15 → clamped to 1).
LIGHT_ELEVATION = (15.0, 80.0)
AMBIENT_RANGE = (0.30, 0.45)
DIFFUSE_RANGE = (0.45, 0.70)
_INT64_MAX = torch.iinfo(torch.int64).max


class Lights(dict):
    """``direction`` [B, 3] unit vectors towards the light (world), ``ambient`` [B], ``diffuse`` [B]."""

    def __getitem__(self, idx):  # type: ignore[override]
        if isinstance(idx, str):
            return dict.__getitem__(self, idx)
        return Lights({k: v[idx] for k, v in self.items()})


def sample_lights(n: int, generator: torch.Generator) -> Lights:
    """``n`` random directional lights: azimuth uniform, elevation uniform in :data:`LIGHT_ELEVATION`."""
    u = torch.rand(n, 4, generator=generator)
    az = u[:, 0] * 2 * math.pi
    el = torch.deg2rad(LIGHT_ELEVATION[0] + (LIGHT_ELEVATION[1] - LIGHT_ELEVATION[0]) * u[:, 1])
    direction = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    ambient = AMBIENT_RANGE[0] + (AMBIENT_RANGE[1] - AMBIENT_RANGE[0]) * u[:, 2]
    diffuse = DIFFUSE_RANGE[0] + (DIFFUSE_RANGE[1] - DIFFUSE_RANGE[0]) * u[:, 3]
    return Lights(direction=direction, ambient=ambient, diffuse=diffuse)


def _fixed_lights(n: int) -> Lights:
    """The fixed light of :func:`render_mesh_colors`' defaults (what the oracle prior renders with)."""
    direction = torch.nn.functional.normalize(torch.tensor([0.4, 0.8, 0.45]), dim=0).expand(n, 3)
    return Lights(direction=direction, ambient=torch.full((n,), 0.35), diffuse=torch.full((n,), 0.65))


def sample_training_cameras(n: int, generator: torch.Generator, resolution: int = 64,
                            camera: Optional[CameraConfig] = None, step: int = 0, views: int = 1) -> Cameras:
    """``n`` cameras from the ``dreamkit fit`` training distribution (``camera`` defaults to CameraConfig()); with
    ``views`` > 1, ``n / views`` groups of views 360°/views apart (see :meth:`CameraSampler.sample`)."""
    cfg = camera if camera is not None else CameraConfig()
    return CameraSampler(generator).sample(
        n, resolution, resolution,
        elevation_range=range_at(cfg.elevation_range, step, "camera.elevation_range"),
        azimuth_range=range_at(cfg.azimuth_range, step, "camera.azimuth_range"),
        distance_range=range_at(cfg.distance_range, step, "camera.distance_range"),
        fovy_range=range_at(cfg.fovy_range, step, "camera.fovy_range"),
        uniform_sphere=cfg.uniform_sphere,
        views=views,
    )


def sample_multiview_cameras(n_groups: int, generator: torch.Generator, resolution: int = 64, views: int = 4,
                             camera: Optional[CameraConfig] = None, step: int = 0) -> Cameras:
    """``n_groups × views`` cameras, group-major: in each group the azimuths are ``a0 + k·360/views`` (90° apart for
    4 views, as MVDream), with one random elevation, distance and field of view shared by the group — the grouping
    that ``dreamkit fit`` samples with ``camera.views``."""
    return sample_training_cameras(n_groups * views, generator, resolution, camera, step, views=views)


@torch.no_grad()
def render_scene_views(
    scene: Scene,
    cameras: Cameras,
    background: Sequence[float] = DEFAULT_BACKGROUND,
    generator: Optional[torch.Generator] = None,
    lights: Optional[Lights] = None,
    ssaa: int = 1,
    verts: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, Lights]:
    """Render ``scene`` from B cameras with flat colours and Lambertian shading.

    Args:
        scene: what to render.
        cameras: B cameras; images are ``cameras.height × cameras.width``.
        background: [3] colour in [0, 1] where nothing is visible.
        generator: draws one random light per image when ``lights`` is not given; with neither, the fixed light
            of :func:`dreamkit.render.raster.render_mesh_colors` (the oracle prior's shading).
        lights: explicit :class:`Lights` with B entries.
        ssaa: supersampling factor (1 = aliased edges, the fast default; 2 = as the oracle prior).
        verts: the scene's vertices [V, 3] moved (same faces and colours), e.g. by a motion at one time τ
            (:func:`dreamkit.world.motion.transform_points`); default the scene at rest.

    Returns:
        rgb [B, H, W, 3] float32 in [0, 1], alpha [B, H, W, 1] coverage, and the lights used.

    Only visibility is computed (no barycentrics, no autograd): flat shading needs just the visible face per
    pixel. Back faces are culled when :attr:`Scene.closed` (outward-wound closed parts; tested against two-sided
    renders), which halves the work.
    """
    B = len(cameras)
    if lights is None:
        lights = sample_lights(B, generator) if generator is not None else _fixed_lights(B)
    rest, faces, face_colors = scene.mesh()
    verts = rest if verts is None else verts.to(rest)
    W, H = cameras.width, cameras.height
    cams = cameras.with_resolution(W * ssaa, H * ssaa) if ssaa > 1 else cameras
    w, h = cams.width, cams.height
    keys = _visibility(verts, faces, cams.viewmats, cams.K, w, h, 0.01, 1 << 18, scene.closed)
    visible = torch.nonzero(keys != _INT64_MAX).squeeze(1)
    fid = keys[visible] & 0xFFFFFFFF
    b = torch.div(visible, h * w, rounding_mode="floor")

    normals = face_normals(verts, faces)  # [F, 3]
    n_dot_l = (normals.index_select(0, fid) * lights["direction"].to(normals).index_select(0, b)).sum(-1).abs()
    shade = lights["ambient"].to(normals)[b] + lights["diffuse"].to(normals)[b] * n_dot_l
    rgb_vis = (face_colors.index_select(0, fid) * shade[:, None]).clamp(0.0, 1.0)

    bg = torch.as_tensor(background, dtype=torch.float32)
    rgb = bg.expand(B * h * w, 3).contiguous().index_put((visible,), rgb_vis).view(B, h, w, 3)
    alpha = torch.zeros(B * h * w, 1).index_fill_(0, visible, 1.0).view(B, h, w, 1)
    if ssaa > 1:
        def pool(x):
            return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)

        rgb, alpha = pool(rgb), pool(alpha)
    return rgb, alpha, lights


def dataset_scenes(n_compositions: int = 512, seed: int = 0) -> list[Scene]:
    """The scene list of a dataset: every single, every asymmetric object, ``n_compositions`` sampled compositions."""
    return all_single_scenes() + asymmetric_scenes() + composition_scenes(n_compositions, seed)


def weighted_choice(weights: dict[str, float], n: int, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """(the names of ``weights``, [n] indices into them drawn with replacement in proportion to the weights)."""
    names = list(weights)
    probs = torch.tensor([float(weights[k]) for k in names], dtype=torch.float64)
    if bool((probs < 0).any()) or float(probs.sum()) <= 0:
        raise ValueError(f"weights must be ≥ 0 with a positive sum, got {weights}")
    return names, torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)


def _draw_scenes(n: int, scenes: Sequence[Scene], kind_weights: dict[str, float],
                 generator: torch.Generator) -> torch.Tensor:
    """[n] scene indices: a kind by ``kind_weights``, then a scene uniformly within the kind."""
    kinds, kind_idx = weighted_choice({k: kind_weights[k] for k in kind_weights if any(s.kind == k for s in scenes)},
                                      n, generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    out = torch.empty(n, dtype=torch.long)
    for i, kind in enumerate(kinds):
        members = torch.tensor([j for j, s in enumerate(scenes) if s.kind == kind])
        sel = kind_idx == i
        out[sel] = members[(u[sel] * len(members)).long().clamp(max=len(members) - 1)]
    return out


def _render_shard(scenes, scene_idx, generator, resolution, multiview, views, background, ssaa, camera):
    """Render one shard: ``scene_idx`` [N] (one per image, or one per group of ``views`` when multiview)."""
    n = scene_idx.shape[0]
    if multiview:
        cams = sample_multiview_cameras(n, generator, resolution, views, camera)
        lights = sample_lights(n, generator)
        per_view = lambda x: x.repeat_interleave(views, 0)  # noqa: E731
        view_lights = Lights({k: per_view(v) for k, v in lights.items()})
        view_scene = per_view(scene_idx)
    else:
        cams = sample_training_cameras(n, generator, resolution, camera)
        lights = view_lights = sample_lights(n, generator)
        view_scene = scene_idx
    images = torch.empty(len(cams), resolution, resolution, 3, dtype=torch.uint8)
    # One rasterizer call per distinct scene in the shard (batched over all of its views).
    for s in torch.unique(view_scene).tolist():
        idx = torch.nonzero(view_scene == s).squeeze(1)
        rgb, _, _ = render_scene_views(scenes[s], cams[idx], background, lights=view_lights[idx], ssaa=ssaa)
        images[idx] = (rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    data = {
        "images": images,
        "elevation": cams.elevation.float(), "azimuth": cams.azimuth.float(),
        "distance": cams.distance.float(), "fovy": cams.fovy.float(), "c2w": cams.c2w.float(),
    }
    if multiview:
        data = {k: v.reshape(n, views, *v.shape[1:]) for k, v in data.items()}
    data.update(scene=scene_idx, light_dir=lights["direction"].float(), ambient=lights["ambient"].float(),
                diffuse=lights["diffuse"].float())
    return data


def build_dataset(
    out_dir: Union[str, Path],
    n_images: int,
    seed: int = 0,
    resolution: int = 64,
    multiview: bool = False,
    views: int = 4,
    shard_size: int = 8192,
    n_compositions: int = 512,
    kind_weights: Optional[dict[str, float]] = None,
    background: Sequence[float] = DEFAULT_BACKGROUND,
    ssaa: int = 1,
    camera: Optional[CameraConfig] = None,
    progress: Optional[Callable[[int, int, float], None]] = None,
    num_threads: Optional[int] = 1,
) -> dict:
    """Render ``n_images`` captioned images of the tiny world into shards under ``out_dir`` (see the module doc).

    Deterministic for a seed (same bytes on every run with the same torch version). With ``multiview`` the images
    come in groups of ``views`` (``n_images`` is rounded down to a multiple of it). ``kind_weights`` sets how often
    each scene kind is drawn (default single 0.4, asymmetric 0.2, composition 0.4). ``progress(done, total,
    images_per_second)`` is called after each shard. ``num_threads`` sets torch's intra-op threads while rendering
    (restored afterwards; None leaves them alone): the tensors are small, and on a shared 2-core machine one thread
    is several times faster than two.

    Returns the metadata written to ``captions.json`` plus ``seconds`` and ``images_per_second``.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _build_dataset(out_dir, n_images, seed, resolution, multiview, views, shard_size, n_compositions,
                              kind_weights, background, ssaa, camera, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _build_dataset(out_dir, n_images, seed, resolution, multiview, views, shard_size, n_compositions, kind_weights,
                   background, ssaa, camera, progress) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind_weights = kind_weights or {"single": 0.4, "asymmetric": 0.2, "composition": 0.4}
    scenes = dataset_scenes(n_compositions, seed)
    captions: list[str] = []
    caption_scene: list[int] = []
    scene_entries = []
    for i, sc in enumerate(scenes):
        first = len(captions)
        captions.extend(sc.captions)
        caption_scene.extend([i] * len(sc.captions))
        scene_entries.append({"key": sc.key, "kind": sc.kind, "caption": sc.caption,
                              "captions": list(range(first, len(captions)))})
    caption_start = torch.tensor([e["captions"][0] for e in scene_entries])
    caption_count = torch.tensor([len(e["captions"]) for e in scene_entries])

    generator = torch.Generator().manual_seed(seed)
    per_item = views if multiview else 1
    n_items = n_images // per_item
    items_per_shard = max(1, shard_size // per_item)
    shards = []
    start = time.perf_counter()
    done = 0
    for shard_id, first_item in enumerate(range(0, n_items, items_per_shard)):
        count = min(items_per_shard, n_items - first_item)
        scene_idx = _draw_scenes(count, scenes, kind_weights, generator)
        pick = torch.rand(count, generator=generator, dtype=torch.float64)
        caption_idx = caption_start[scene_idx] + (pick * caption_count[scene_idx]).long().clamp(
            max=caption_count[scene_idx] - 1)
        data = _render_shard(scenes, scene_idx, generator, resolution, multiview, views, background, ssaa, camera)
        data["caption"] = caption_idx
        name = f"shard_{shard_id:05d}.pt"
        torch.save(data, out_dir / name)
        shards.append({"file": name, "count": count * per_item})
        done += count * per_item
        if progress is not None:
            progress(done, n_items * per_item, done / max(time.perf_counter() - start, 1e-9))
    seconds = time.perf_counter() - start
    cfg = camera if camera is not None else CameraConfig()
    meta = {
        "version": 1,
        "n_images": done,
        "resolution": resolution,
        "background": list(background),
        "seed": seed,
        "multiview": multiview,
        "views": views if multiview else 1,
        "ssaa": ssaa,
        "kind_weights": kind_weights,
        "camera": {k: asdict(cfg)[k] for k in ("elevation_range", "azimuth_range", "distance_range", "fovy_range",
                                              "uniform_sphere")},
        "light": {"elevation": LIGHT_ELEVATION, "ambient": AMBIENT_RANGE, "diffuse": DIFFUSE_RANGE},
        "shards": shards,
        "scenes": scene_entries,
        "captions": captions,
        "caption_scene": caption_scene,
    }
    (out_dir / "captions.json").write_text(json.dumps(meta, indent=1))
    return {**meta, "seconds": seconds, "images_per_second": done / max(seconds, 1e-9)}


def load_shard(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """A shard written by :func:`build_dataset` (plain tensors only, so ``weights_only`` loading is safe)."""
    return torch.load(Path(path), weights_only=True)
