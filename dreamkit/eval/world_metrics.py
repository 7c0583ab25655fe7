"""Scores against the tiny world's ground truth: geometry (Chamfer, volumetric IoU, nearest world shape), colour
(hue error, nearest world colour), orientation (number of fronts over an orbit) and 2D samples (shape and colour of
a prior's sample image).
"""
from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..world import COLOURS, SHAPE_NAMES, single_scene

BACKGROUND = (0.9, 0.9, 0.9)
#: the factor by which the dataset's lighting scales a surface colour: ambient 0.3–0.45 plus diffuse 0.45–0.7 times
#: the cosine (dreamkit.world.dataset), with a margin
WORLD_SHADE_RANGE = (0.25, 1.2)


# -- geometry ------------------------------------------------------------------------------------------------------

def triangle_areas(tri: torch.Tensor) -> torch.Tensor:
    """[F, 3, 3] triangles (``verts[faces]``) → [F] twice their areas (|e1 × e2|; a weight, so the ½ is left out)."""
    return torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3] points uniformly on the surface (area-weighted faces, uniform barycentrics)."""
    gen = torch.Generator().manual_seed(seed)
    tri = verts[faces].double()
    area = triangle_areas(tri)
    idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=gen)
    u, v = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64)
    flip = u + v > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    t = tri[idx]
    return (t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])).float()


def normalize_points(points: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Centre the bounding box at the origin and scale to unit bounding radius (of ``reference`` if given)."""
    ref = points if reference is None else reference
    centre = (ref.min(0).values + ref.max(0).values) / 2
    radius = (ref - centre).norm(dim=-1).max().clamp_min(1e-9)
    return (points - centre) / radius


def nearest_distances(points: torch.Tensor, targets: torch.Tensor, chunk: int = 4096,
                      compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> torch.Tensor:
    """[P] distance from each of ``points`` [P, 3] to the nearest of ``targets`` [T, 3], ``chunk`` points at a time
    (``compute_mode`` as torch.cdist's; ``donot_use_mm_for_euclid_dist`` is exact for nearby points)."""
    return torch.cat([torch.cdist(points[i:i + chunk], targets, compute_mode=compute_mode).min(dim=1).values
                      for i in range(0, len(points), chunk)])


def chamfer(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour distance a→b plus b→a (not squared)."""
    def one_way(x, y):
        return nearest_distances(x, y, chunk, "donot_use_mm_for_euclid_dist").mean()
    return float(one_way(a, b) + one_way(b, a))


def winding_number(verts: torch.Tensor, faces: torch.Tensor, points: torch.Tensor,
                   max_pairs: int = 1 << 21) -> torch.Tensor:
    """Generalised winding number (Jacobson et al. 2013) of a triangle mesh at ``points`` [P, 3]: ≈1 inside, ≈0 out.

    Robust to small holes and flipped patches, so exported meshes need not be perfectly watertight.
    """
    tri = verts[faces].float()  # [F, 3, 3]
    chunk = max(1, max_pairs // max(len(faces), 1))  # bounds memory: chunk·F point–triangle pairs at a time
    out = []
    for i in range(0, len(points), chunk):
        p = points[i:i + chunk].float()[:, None, None, :]  # [P, 1, 1, 3]
        r = tri[None] - p  # [P, F, 3, 3]
        n = r.norm(dim=-1)  # [P, F, 3]
        a, b, c = r.unbind(2)
        la, lb, lc = n.unbind(2)
        det = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append((2 * torch.atan2(det, den)).sum(-1) / (4 * math.pi))
    return torch.cat(out).float()


def volume_iou(mesh_a: tuple[torch.Tensor, torch.Tensor], mesh_b: tuple[torch.Tensor, torch.Tensor],
               resolution: int = 20) -> float:
    """Volumetric IoU of two meshes on a grid over their joint bounding box (winding number ≥ 0.5 = inside)."""
    va, vb = mesh_a[0].float(), mesh_b[0].float()
    lo = torch.minimum(va.min(0).values, vb.min(0).values)
    hi = torch.maximum(va.max(0).values, vb.max(0).values)
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution) for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    ia = winding_number(va, mesh_a[1], grid) >= 0.5
    ib = winding_number(vb, mesh_b[1], grid) >= 0.5
    union = (ia | ib).sum()
    return float((ia & ib).sum() / union) if union > 0 else 0.0


@lru_cache(maxsize=None)
def _shape_points(shape: str, n: int = 2048) -> torch.Tensor:
    verts, faces, _ = single_scene(shape, "red").mesh()
    return normalize_points(sample_surface(verts, faces, n))


def nearest_shape(verts: torch.Tensor, faces: torch.Tensor) -> tuple[str, dict[str, float]]:
    """The world shape whose normalised surface is nearest (Chamfer) to the mesh's normalised surface."""
    points = normalize_points(sample_surface(verts, faces, 2048, seed=1))
    scores = {s: chamfer(points, _shape_points(s)) for s in SHAPE_NAMES}
    return min(scores, key=scores.get), scores


def _resample_polyline(polyline: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` along a polyline (a box's section has only its corners as vertices)."""
    out = [polyline[:1]]
    for a, b in zip(polyline[:-1], polyline[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    return np.vstack(out)


def section_ratio(verts, faces, height: float = 0.0, bin_deg: float = 5.0,
                  min_turn: float = 0.9) -> Optional[float]:
    """Largest over smallest radius, by angle, of the mesh's horizontal section at ``height`` above its bounding-box
    centre: the mean radius (from the vertical axis through the centre) in ``bin_deg`` bins of the angle modulo 90°.
    A square section turned any way about the vertical gives 1.36–1.38 at 5° bins (a cube, a pyramid), a round one
    1.00 (a cylinder, a cone, a sphere). Tells a box from a solid of revolution, which nearest-shape Chamfer does not
    (a round column can be nearest to the cube). None when the plane misses the mesh. Uses trimesh's section.

    A mesh that is not closed (a visual hull's can have a hole) cuts into open polylines, which trimesh leaves out of
    its closed loops (``section.discrete``); those are used when there is no closed loop, provided that they go round
    the vertical axis through the centre (``min_turn`` of the 72 5°-sectors of the full turn hold a point), so that a
    plane which only touches an edge or a side still gives None."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False)
    centre = mesh.bounds.mean(0)
    section = mesh.section(plane_origin=[centre[0], centre[1] + height, centre[2]], plane_normal=[0, 1, 0])
    if section is None:  # the plane misses the mesh
        return None
    step = float(mesh.extents[[0, 2]].max()) / 200
    lines = list(section.discrete)
    closed = len(lines) > 0
    if not closed:  # open polylines only (or a plane that only touches the mesh)
        lines = [e.discrete(section.vertices) for e in section.entities]
        lines = [line for line in lines if len(line) >= 2]
        if not lines:
            return None
    points = np.vstack([_resample_polyline(line, step) for line in lines])
    d = points[:, [0, 2]] - centre[[0, 2]]
    turn = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360.0
    if not closed and len(np.unique((turn // 5.0).astype(int))) < min_turn * 72:
        return None
    radius = np.linalg.norm(d, axis=1)
    angle = turn % 90.0
    n_bins = int(round(90 / bin_deg))
    bins = np.clip((angle // bin_deg).astype(int), 0, n_bins - 1)
    by_bin = np.array([radius[bins == k].mean() for k in range(n_bins) if (bins == k).any()])
    return float(by_bin.max() / by_bin.min())


# -- colour --------------------------------------------------------------------------------------------------------

def circular_mean_hue(rgb: torch.Tensor, weights: Optional[torch.Tensor] = None,
                      min_saturation: float = 0.25) -> Optional[float]:
    """Weighted circular mean hue (degrees) of [N, 3] colours in [0, 1], saturated ones only; None if none are."""
    arr = rgb.detach().clamp(0, 1).cpu().numpy().astype(np.float64)
    hsv = np.array([colorsys.rgb_to_hsv(*c) for c in arr]) if len(arr) else np.zeros((0, 3))
    w = np.ones(len(arr)) if weights is None else weights.detach().cpu().numpy().astype(np.float64)
    keep = (hsv[:, 1] >= min_saturation) & (hsv[:, 2] >= 0.15) if len(arr) else np.zeros(0, bool)
    if not keep.any() or w[keep].sum() <= 0:
        return None
    ang = hsv[keep, 0] * 2 * math.pi
    s, c = (w[keep] * np.sin(ang)).sum(), (w[keep] * np.cos(ang)).sum()
    return (math.degrees(math.atan2(s, c)) + 360.0) % 360.0


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def nearest_colour(hue: Optional[float]) -> Optional[str]:
    if hue is None:
        return None
    return min(COLOURS, key=lambda name: hue_distance(hue, COLOURS[name].hue))


# -- 2D samples ----------------------------------------------------------------------------------------------------

def foreground_mask(image: torch.Tensor, background: Sequence[float] = BACKGROUND, threshold: float = 0.12):
    """[3, H, W] in [0, 1] → [H, W] bool: pixels that differ from the background colour."""
    bg = torch.tensor(background, dtype=image.dtype).view(3, 1, 1)
    return (image - bg).abs().amax(0) > threshold


def _normalise_mask(mask: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Crop to a square around the mask's bounding box and resize, so scale and position do not matter."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return torch.zeros(size, size)
    cy, cx = (ys.min() + ys.max()).float() / 2, (xs.min() + xs.max()).float() / 2
    # the box's half side in pixels, edge to edge (pixels span [min, max + 1)); a margin here would shrink small
    # masks more than large ones, so 32² samples would not match the 64² library's silhouettes
    half = (max(float(ys.max() - ys.min()), float(xs.max() - xs.min())) + 1) / 2
    theta = torch.tensor([[[half / mask.shape[1] * 2, 0, (cx + 0.5) / mask.shape[1] * 2 - 1],
                           [0, half / mask.shape[0] * 2, (cy + 0.5) / mask.shape[0] * 2 - 1]]])
    grid = torch.nn.functional.affine_grid(theta, (1, 1, size, size), align_corners=False)
    out = torch.nn.functional.grid_sample(mask[None, None].float(), grid, align_corners=False)
    return out[0, 0] > 0.5


@lru_cache(maxsize=None)
def _silhouette_library(resolution: int = 64) -> dict[str, torch.Tensor]:
    from ..cameras import cameras_from_spherical
    from ..render.raster import render_mesh_colors

    # the whole elevation range that fits and the dataset sample (-10° to 45°), every 15° of azimuth, rendered at the
    # judged image's resolution (aliased as the priors' training renders are): with only elevations -5/15/35, 45°
    # steps and 64² silhouettes the judge got 32² ground-truth renders right 90% of the time (cubes seen from 45°
    # judged cylinders, spheres judged cylinders); with this library 97% (python scripts/judge_accuracy.py)
    el = torch.tensor([-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 45.0]).repeat_interleave(24)
    az = torch.arange(0, 360, 15, dtype=torch.float32).repeat(7)
    cams = cameras_from_spherical(el, az, torch.full_like(el, 2.75), torch.full_like(el, 40.0), resolution,
                                  resolution)
    lib = {}
    for shape in SHAPE_NAMES:
        verts, faces, colors = single_scene(shape, "red").mesh()
        _, alpha, _ = render_mesh_colors(verts, faces, cams, face_colors=colors)
        lib[shape] = torch.stack([_normalise_mask(a[..., 0] > 0.5) for a in alpha])
    return lib


def classify_sample(image: torch.Tensor, background: Sequence[float] = BACKGROUND) -> dict:
    """Which world shape and colour a sample image [3, H, W] shows, judged against ground-truth silhouettes.

    Shape: best silhouette IoU (after normalising position and scale) over renders of every world shape from 168
    views (elevations -10° to 45°, every 15° of azimuth) at the image's resolution; colour: circular mean hue of the
    saturated foreground pixels, nearest world colour. Right on 97% of the world's own 32² renders
    (``python scripts/judge_accuracy.py``): a prior's samples are judged against that ceiling.
    """
    mask = foreground_mask(image, background)
    norm = _normalise_mask(mask)
    ious = {}
    for shape, masks in _silhouette_library(int(image.shape[-1])).items():
        inter = (masks & norm).flatten(1).sum(1).float()
        union = (masks | norm).flatten(1).sum(1).float().clamp_min(1)
        ious[shape] = float((inter / union).max())
    hue = circular_mean_hue(image.permute(1, 2, 0)[mask]) if mask.any() else None
    shape = max(ious, key=ious.get)
    return {"shape": shape, "shape_iou": ious[shape], "colour": nearest_colour(hue), "hue": hue,
            "foreground": float(mask.float().mean())}


def sample_judge_accuracy(per_scene: int, resolution: int, generator: torch.Generator) -> dict:
    """How often :func:`classify_sample` is right on the world's own ground truth: every single-object scene rendered
    ``per_scene`` times from the fit/dataset camera distribution with random lights (drawn from ``generator``).

    Returns ``{"right": Counter, "total": Counter}`` per shape and ``"confusions"``: Counter of
    "colour shape → judged colour judged shape". Used by ``scripts/judge_accuracy.py`` and the tests.
    """
    import collections

    from ..world.dataset import render_scene_views, sample_training_cameras
    from ..world.scenes import all_single_scenes

    right: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    confusions: collections.Counter = collections.Counter()
    for scene in all_single_scenes():
        images, _, _ = render_scene_views(scene, sample_training_cameras(per_scene, generator, resolution),
                                          generator=generator)
        shape, colour = scene.shapes[0], scene.colours[0]
        for image in images:
            verdict = classify_sample(image.permute(2, 0, 1))
            ok = verdict["shape"] == shape and verdict["colour"] == colour
            total[shape] += 1
            right[shape] += ok
            if not ok:
                confusions[f"{colour} {shape} → {verdict['colour']} {verdict['shape']}"] += 1
    return {"right": right, "total": total, "confusions": confusions}


# -- orientation ---------------------------------------------------------------------------------------------------

def feature_fractions(images: torch.Tensor, feature_rgb: Sequence[float], tolerance: float = 0.12,
                      shade_range: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """``images`` [V, H, W, 3] in [0, 1] → [V]: the fraction of each image's pixels that show the feature colour.

    Shading darkens colours, so a pixel matches the feature when its hue and chroma are close (rgb normalised by
    its maximum) and it is not near black. ``shade_range`` (lo, hi) also asks the pixel's brightness to be the
    feature's times a shade in [lo, hi]: in blurry samples a blend of two other colours can have the feature's hue
    (the house's red roof over its yellow wall blends to its brown door's hue, but about 2.4× brighter).
    """
    feat = torch.as_tensor(feature_rgb, dtype=torch.float32)
    peak = feat.max().clamp_min(1e-6)
    feat = feat / peak
    images = images.float()
    value = images.amax(-1)
    norm = images / value.unsqueeze(-1).clamp_min(1e-6)
    match = ((norm - feat).abs().amax(-1) < tolerance) & (value > 0.1)
    if shade_range is not None:
        match &= (value >= shade_range[0] * peak) & (value <= shade_range[1] * peak)
    return match.flatten(1).float().mean(1)


def feature_pixels(fractions: Sequence[float], resolution: int) -> list[int]:
    """Per-view feature fractions (:func:`feature_fractions`) of ``resolution``² images as pixel counts."""
    return [int(round(f * resolution * resolution)) for f in fractions]


def _circular_runs(seen: Sequence[bool]) -> int:
    """Separate runs of True in a circular sequence (all True = 1)."""
    if all(seen):
        return 1
    return sum(1 for i in range(len(seen)) if seen[i] and not seen[i - 1])


def _hysteresis(values: Sequence[float], high: float, low: float) -> list[bool]:
    """Circular hysteresis thresholding (as Canny's edge linking): a view is seen when its value is at least ``low``
    and it lies in a circular run of such views that holds at least one value at or above ``high``."""
    n = len(values)
    weak = [v >= low for v in values]
    seen = [False] * n
    for i in range(n):
        if values[i] >= high and not seen[i]:
            seen[i] = True
            for step in (1, -1):  # grow the run both ways while the views stay above the low threshold
                j = (i + step) % n
                while weak[j] and not seen[j]:
                    seen[j] = True
                    j = (j + step) % n
    return seen


def count_fronts(render: Callable[[torch.Tensor], torch.Tensor], feature_rgb: Sequence[float], views: int = 24,
                 tolerance: float = 0.12, min_fraction: float = 0.002,
                 truth: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 relative: float = 0.25, relative_low: Optional[float] = None,
                 shade_range: Optional[tuple[float, float]] = None) -> tuple[int, list[float]]:
    """Number of fronts: separate azimuth ranges from which the front feature is visible over a 360° orbit.

    ``render(azimuths [V]) -> [V, H, W, 3]``. A correct object shows its front once; a Janus object twice or more.
    A feature seen from every azimuth is no front (0): every world object hides its front from behind (the truth
    shows it over 9–14 of 24 views), so a feature colour all around means it was painted everywhere.

    A view shows the front when the feature covers more than ``min_fraction`` of it, or, when ``truth`` (the ground
    truth rendered on the same orbit) is given, at least ``relative`` × the truth's largest fraction (and 2 pixels):
    the threshold then follows the feature's real size instead of a fixed fraction that is 8 px at 64² — above most
    of what a snowman's carrot covers — and 33 px at 128², where pixel noise splits a Janus snowman into 4 runs
    (``scripts/front_pixels_truth.py``). The multi-view sample judge uses the same kind of threshold.

    ``relative_low`` (with ``truth``) links views by hysteresis: a view at or above ``relative_low`` × the truth's
    largest fraction also counts when it is next to a counted view, so that one faint view inside a front's azimuth
    range does not split it into two fronts, while a faint speck that touches no clearly seen view counts nothing.
    ``shade_range`` also asks the pixels to have the feature's brightness under the world's shading
    (:func:`feature_fractions`): a fit's shaded walls can take a door's hue while being much brighter.
    """
    az = torch.arange(views, dtype=torch.float32) * (360.0 / views)
    images = render(az)
    fractions = feature_fractions(images, feature_rgb, tolerance, shade_range).tolist()
    if truth is not None:
        pixels = images.shape[1] * images.shape[2]
        peak = float(feature_fractions(truth(az), feature_rgb, tolerance, shade_range).max())
        floor = 2.0 / pixels
        high = max(relative * peak, floor)
        low = high if relative_low is None else min(max(relative_low * peak, floor), high)
        seen = _hysteresis(fractions, high, low)
    else:
        seen = [f > min_fraction for f in fractions]
    return (0 if all(seen) else _circular_runs(seen)), fractions


def judge_multiview(images: torch.Tensor, cameras, scene, group: int, background: Sequence[float] = BACKGROUND,
                    tolerance: float = 0.12, shade_range: tuple[float, float] = WORLD_SHADE_RANGE) -> list[dict]:
    """Judge a multi-view prior's joint samples against the ground truth rendered at the same cameras.

    ``images`` [N, 3, H, W] in [0, 1], N = groups × ``group``; the views of a group are 360°/group apart, in order,
    as `sample_cameras(..., group=V)` makes them; ``scene`` the world scene of the prompt. Per group:

    * ``silhouette_iou``: mean over views of the IoU of the sample's foreground and the truth's at that camera (the
      cameras are known, so position, size and pose all count);
    * single objects: ``views`` = (colour, shape) judged per view by :func:`classify_sample`; ``consistent`` when every
      view shows the prompted shape and colour;
    * asymmetric objects: the front feature's pixel fraction per view, sample (``front_sample``) and truth
      (``front_truth``); a view shows the front when its fraction is at least 30% of the truth's largest in the group
      (and a pixel), counting pixels of the feature's hue and of its brightness under the world's shading
      (``shade_range``, see :func:`feature_fractions`). ``consistent`` (one object, no Janus) when the views showing it form one run around the circle
      and not all of them (unless the truth shows it in all, as a snowman's carrot from high up); ``oriented`` when they are exactly the views that show it in the truth (the prior was
      trained with the world's fronts facing +Z, so a good multi-view prior also gets the absolute turn right).
    Compositions are not judged (``consistent`` None).
    """
    from ..render.raster import render_mesh_colors
    from ..world import ASYMMETRIC_OBJECTS

    n, _, h, w = images.shape
    if group < 1 or n % group:
        raise ValueError(f"{n} images are not whole groups of {group} views")
    verts, faces, colors = scene.mesh()
    truth_rgb, truth_alpha, _ = render_mesh_colors(verts, faces, cameras, face_colors=colors, background=background)
    truth_mask = truth_alpha[..., 0] > 0.5
    sample_mask = torch.stack([foreground_mask(im, background) for im in images])
    inter = (truth_mask & sample_mask).flatten(1).sum(1).float()
    union = (truth_mask | sample_mask).flatten(1).sum(1).float().clamp_min(1)
    iou = inter / union
    out = []
    for g in range(n // group):
        sl = slice(g * group, (g + 1) * group)
        row: dict = {"silhouette_iou": float(iou[sl].mean()), "consistent": None, "oriented": None}
        if scene.kind == "single":
            verdicts = [classify_sample(im, background) for im in images[sl]]
            row["views"] = [(v["colour"], v["shape"]) for v in verdicts]
            row["consistent"] = all(v == (scene.colours[0], scene.shapes[0]) for v in row["views"])
        elif scene.kind == "asymmetric":
            feature = [c / 255.0 for c in ASYMMETRIC_OBJECTS[scene.shapes[0]].front_feature]
            fs = feature_fractions(images[sl].permute(0, 2, 3, 1), feature, tolerance, shade_range)
            ft = feature_fractions(truth_rgb[sl], feature, tolerance, shade_range)
            threshold = max(0.3 * float(ft.max()), 1.0 / (h * w))
            seen_s = [bool(f >= threshold) for f in fs]
            seen_t = [bool(f >= threshold) for f in ft]
            row.update(front_sample=fs.tolist(), front_truth=ft.tolist(), seen_sample=seen_s, seen_truth=seen_t)
            row["consistent"] = (any(seen_s) and _circular_runs(seen_s) == 1
                                 and (not all(seen_s) or all(seen_t)))  # from high up a carrot shows all round
            row["oriented"] = seen_s == seen_t
        out.append(row)
    return out
