"""`dreamkit eval`: fit a list of world prompts, export their geometry, score each against its ground truth.

For every prompt: ``dreamkit fit`` with the recipe (with the oracle prior, the prompt's ground-truth scene becomes
the oracle's target, so the benchmark has a known answer), marching-cubes export of the result, then
* Chamfer distance and volumetric IoU against the ground-truth mesh, raw (world units, as placed) and after
  centring and scaling both to unit bounding radius;
* the world shape nearest to the result (normalised Chamfer) — right or wrong;
* hue of the result (circular mean over saturated vertex colours), nearest world colour, hue error in degrees;
* for asymmetric objects, the number of fronts seen over a 360° orbit (1 = correct, 2+ = Janus), on the exported
  mesh (``fronts``) and on the fitted representation's own renders (``fronts_fit``);
* for single objects, the verdict ``ok`` (:func:`verdict`): the nearest shape and colour are the prompted ones, the
  size is right (sorted extents within ±20% of the truth's, ``size_ok``) and a square-sectioned truth (cube, pyramid)
  has square sections (``sections`` ≥ 1.25, ``sections_ok``) — so a round column does not count as a cube.
Writes ``results.md`` (a Markdown table and a summary), ``results.csv`` and ``contact_sheet.png`` (8 turntable
frames per prompt).
"""
from __future__ import annotations

import csv
import time
from collections import deque
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import DreamkitError
from ..world import ASYMMETRIC_OBJECTS, COLOURS, SHAPE_NAMES, parse_prompt
from ..world.motion import Motion, split_motion_caption
from .world_metrics import WORLD_SHADE_RANGE

_COLOUR_CYCLE = ("red", "blue", "green", "yellow", "purple", "orange", "cyan", "pink")


def _singles(n: int) -> list[str]:
    """n single-object prompts: shapes in turn, the colour shifted by one each round, so no pair repeats."""
    out = []
    for i in range(n):
        shape, colour = SHAPE_NAMES[i % len(SHAPE_NAMES)], _COLOUR_CYCLE[(i + i // len(SHAPE_NAMES)) % 8]
        out.append(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}")
    return out


PROMPT_SETS = {"singles20": _singles(20), "asymmetric": [o.captions[0] for o in ASYMMETRIC_OBJECTS.values()]}
PROMPT_SETS["singles4"] = PROMPT_SETS["singles20"][:4]
#: two-object compositions for compositional guidance (gs_semantic.yaml against plain SDS), scored per part: every
#: shape and colour of the world in both relations, no pair repeated
PROMPT_SETS["compositions8"] = [
    "a red cube on top of a blue sphere", "a green cone next to a yellow torus",
    "a purple cylinder next to an orange pyramid", "a yellow cone on top of a green cylinder",
    "a blue cube next to a pink capsule", "a cyan sphere on top of a red cylinder",
    "an orange pyramid next to a blue sphere", "a green cube on top of a purple torus"]
#: 4D: the tiny video prior's probe motions on two objects (a cube shows a turn, a sphere does not; both show travel)
PROMPT_SETS["motions8"] = [f"{obj} {motion}" for obj in ("a red cube", "a blue sphere")
                           for motion in ("moving left", "moving right", "bouncing", "spinning")]


def resolve_prompts(spec: Sequence[str]) -> list[str]:
    prompts: list[str] = []
    for item in spec:
        prompts.extend(PROMPT_SETS.get(item, [item]))
    bad = [p for p in prompts if parse_prompt(split_motion_caption(p)[0]) is None]
    if bad:
        from ..world import nearest_prompts

        raise DreamkitError(f"not a tiny-world prompt: {bad[0]!r} — nearest: {', '.join(nearest_prompts(bad[0]))}; "
                            f"prompt sets: {', '.join(PROMPT_SETS)}")
    return prompts


#: a fit's sorted extents within this fraction of the truth's (``size_ok``)
SIZE_TOLERANCE = 0.20
#: sections (largest/smallest radius by angle of the horizontal section at mid-height) that count as square; the
#: truth's cubes and pyramids measure 1.36–1.38, a solid of revolution 1.00
SQUARE_SECTIONS = 1.25
#: truths whose sections are at least this are square-sectioned (cubes, pyramids)
SQUARE_TRUTH = 1.2


def _extents(text) -> list[float] | None:
    """"X×Y×Z" (the ``extent`` column) → [x, y, z], or None."""
    try:
        values = [float(x) for x in str(text).split("×")]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def verdict(row: dict) -> dict:
    """``size_ok``, ``sections_ok`` and ``ok`` of a single object's row (from its nearest_shape/shape_ok, colour_ok,
    extent, extent_truth, sections and sections_truth; works on rows read back from results.csv, where values are
    strings)."""
    def number(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def flag(value) -> bool:
        return value is True or str(value) == "True"

    fit, truth = _extents(row.get("extent")), _extents(row.get("extent_truth"))
    size_ok = bool(fit and truth and all(abs(a / b - 1) <= SIZE_TOLERANCE
                                         for a, b in zip(sorted(fit), sorted(truth)) if b > 0))
    sections, sections_truth = number(row.get("sections")), number(row.get("sections_truth"))
    square = sections_truth is not None and sections_truth >= SQUARE_TRUTH
    sections_ok = (not square) or (sections is not None and sections >= SQUARE_SECTIONS)
    ok = flag(row.get("shape_ok")) and flag(row.get("colour_ok")) and size_ok and sections_ok
    return {"size_ok": size_ok, "sections_ok": sections_ok, "ok": ok}


def score_mesh(mesh, scene) -> dict:
    """Metrics of an exported mesh (``dreamkit.export.mesh.Mesh``) against a world scene's ground truth."""
    from .world_metrics import (chamfer, circular_mean_hue, hue_distance, nearest_colour, nearest_shape,
                                normalize_points, sample_surface, section_ratio, volume_iou)

    from ..export.extract import decimate

    v = torch.as_tensor(mesh.verts, dtype=torch.float32)
    f = torch.as_tensor(mesh.faces, dtype=torch.long)
    gv, gf, gcol = scene.mesh()
    # the volumetric IoU uses a 1000-face version of the result (winding numbers cost points × faces)
    dv, df = decimate(mesh.verts, mesh.faces, 1000) if len(mesh.faces) > 1000 else (mesh.verts, mesh.faces)
    dv, df = torch.as_tensor(dv, dtype=torch.float32), torch.as_tensor(df, dtype=torch.long)
    pts, gpts = sample_surface(v, f, 4096, seed=2), sample_surface(gv, gf, 4096, seed=3)
    row = {
        "chamfer": chamfer(pts, gpts),
        "chamfer_norm": chamfer(normalize_points(pts), normalize_points(gpts)),
        "iou": volume_iou((dv, df), (gv, gf)),
        "iou_norm": volume_iou((normalize_points(dv, pts), df), (normalize_points(gv, gpts), gf)),
    }
    if scene.kind == "single":
        shape, _ = nearest_shape(v, f)
        row["nearest_shape"] = shape
        row["shape_ok"] = shape == scene.shapes[0]
        hue = circular_mean_hue(torch.as_tensor(mesh.vertex_colors)) if mesh.vertex_colors is not None else None
        row["hue"] = hue
        row["colour"] = nearest_colour(hue)
        row["hue_error"] = hue_distance(hue, COLOURS[scene.colours[0]].hue) if hue is not None else 180.0
        row["colour_ok"] = row["colour"] == scene.colours[0]
        row["sections"] = section_ratio(mesh.verts, mesh.faces)
        row["sections_truth"] = section_ratio(gv.numpy(), gf.numpy())
    if scene.kind == "asymmetric":
        row["fronts"], fractions = fronts_of_mesh(mesh, scene)
        row["front_px"] = _pixels_per_view(fractions)
    if scene.kind == "composition":
        row.update(score_parts(mesh, scene))
    row["extent"] = _extent(v)
    row["extent_truth"] = _extent(torch.as_tensor(gv, dtype=torch.float32))
    row["stray"] = stray_fraction(pts, gpts, torch.as_tensor(gv, dtype=torch.float32), gf)
    if scene.kind == "single":
        row.update(verdict(row))
    return row


def score_parts(mesh, scene) -> dict:
    """Each part of a two-object composition scored on its own: every face of the export goes to the truth part
    whose surface is nearest its centroid; each part's faces are then classified as a single object is (nearest
    world shape, circular mean hue of its faces' colours). ``parts``: "shape/colour ✓|✗" per part, in the caption's
    order; ``parts_ok``: how many parts have both the truth's shape and colour; ``shape_ok``/``colour_ok``: every
    part's; ``ok``: both parts right. The same split applies to any fit (plain SDS included), so methods compare
    on equal terms. Colours are area-weighted, so that the few faces of the neighbour's that touch a part do not
    outvote it."""
    from ..world.scenes import _scene_parts
    from .world_metrics import (circular_mean_hue, nearest_colour, nearest_distances, nearest_shape, sample_surface,
                                triangle_areas)

    v = torch.as_tensor(mesh.verts, dtype=torch.float32)
    f = torch.as_tensor(mesh.faces, dtype=torch.long)
    truth = _scene_parts(scene)
    centroids = v[f].mean(1)
    distance = []
    for k, part in enumerate(truth):
        pts = sample_surface(torch.as_tensor(part.vertices, dtype=torch.float32),
                             torch.as_tensor(part.faces, dtype=torch.long), 2048, seed=10 + k)
        distance.append(nearest_distances(centroids, pts))
    owner = torch.stack(distance).argmin(0)
    labels, right, shapes_ok, colours_ok = [], 0, True, True
    colours = torch.as_tensor(mesh.vertex_colors) if mesh.vertex_colors is not None else None
    for k, (shape, colour) in enumerate(zip(scene.shapes, scene.colours)):
        faces = f[owner == k]
        if len(faces) < 4:
            labels.append(f"none (want {shape}/{colour}) ✗")
            shapes_ok = colours_ok = False
            continue
        got_shape, _ = nearest_shape(v, faces)
        got_colour = None
        if colours is not None:  # each face's mean colour, weighted by its area
            got_colour = nearest_colour(circular_mean_hue(colours.float()[faces].mean(1), triangle_areas(v[faces])))
        ok = got_shape == shape and got_colour == colour
        shapes_ok &= got_shape == shape
        colours_ok &= got_colour == colour
        right += ok
        labels.append(f"{got_shape}/{got_colour} {'✓' if ok else '✗'}")
    return {"parts": " · ".join(labels), "parts_ok": right, "shape_ok": shapes_ok, "colour_ok": colours_ok,
            "ok": right == len(scene.shapes)}


#: a fit's surface point counts as stray when it lies farther than this fraction of the truth's largest extent from
#: the truth's surface (a cube 15% too large stays under it everywhere: its corners are 7.5%·√3 = 13% out)
STRAY_DISTANCE = 0.15


def stray_fraction(points: torch.Tensor, truth_points: torch.Tensor, truth_verts: torch.Tensor,
                   truth_faces: Optional[torch.Tensor] = None) -> float:
    """The share of a fit's surface samples ``points`` [P, 3] farther than ``STRAY_DISTANCE`` × the truth's largest
    extent from the truth's surface samples ``truth_points`` (``stray``) and outside the truth's solid (winding
    number < 0.5; with ``truth_faces``): parts outside the object — a draped bottom, a lid, a floater — that the
    extents and Chamfer average away. A face caved in toward the inside is not outside the object and does not
    count (it lowers the Chamfer and the IoU instead)."""
    from .world_metrics import nearest_distances, winding_number

    limit = STRAY_DISTANCE * float((truth_verts.max(0).values - truth_verts.min(0).values).max())
    far = nearest_distances(points, truth_points) > limit
    if truth_faces is not None and bool(far.any()):
        far[far.clone()] = winding_number(truth_verts.float(), truth_faces, points[far]) < 0.5
    return float(far.float().mean())


def fronts_of_mesh(mesh, scene) -> tuple[int, list[float]]:
    """Fronts seen over the 360° orbit of an exported mesh (``fronts``): (count, the feature's fraction of each view),
    as :func:`~dreamkit.eval.world_metrics.count_fronts`.

    The mesh is rendered unlit: an export's colours are those of the fit's renders (``RenderedColors``) or of its
    field, so they already hold the lighting that the prior's training images had, as the fit's own renders
    (``fronts_fit``) do. Shading them again darkens a yellow wall toward a brown door's colour: with the ground
    truth's own renders projected onto its mesh (a perfect fit's export), a shaded count sees door pixels where the
    truth shows none, while the unlit count matches the truth view by view (tests/test_eval.py,
    ``test_fronts_of_a_perfect_bake_match_the_truth``)."""
    from ..export.mesh import render_mesh
    from .world_metrics import count_fronts

    feature = [c / 255.0 for c in ASYMMETRIC_OBJECTS[scene.shapes[0]].front_feature]

    def render(az: torch.Tensor) -> torch.Tensor:
        return render_mesh(mesh, _front_render_cameras(az), background=(1.0, 1.0, 1.0), ambient=1.0, diffuse=0.0)[0]

    return count_fronts(render, feature, truth=_truth_front_render(scene), **FRONT_COUNT)


def _extent(verts: torch.Tensor) -> str:
    """The axis-aligned size of a mesh as ``"X×Y×Z"`` (world units; +Y up): shows a fit that is the right shape but
    the wrong size or proportions (e.g. a cube grown into a column)."""
    size = (verts.max(0).values - verts.min(0).values).tolist()
    return "×".join(f"{x:.2f}" for x in size)


def _pixels_per_view(fractions, resolution: int = 64) -> str:
    """Front-feature pixels per orbit view (24 views, 15° apart from azimuth 0 = +Z), space-separated: what the
    front count saw, for the CSV."""
    from .world_metrics import feature_pixels

    return " ".join(map(str, feature_pixels(fractions, resolution)))


#: how `dreamkit eval` counts fronts (with the truth's own feature size, see ``world_metrics.count_fronts``): a view
#: shows the front at >= 25% of the truth's largest feature fraction on the orbit, or at >= 12.5% next to such a
#: view (hysteresis, Canny's 2:1), counting pixels of the feature's hue *and* brightness under the world's shading.
#: Checked on the truth and on Janus copies at 48², 64², 128²: ``scripts/front_pixels_truth.py``.
FRONT_COUNT = dict(relative=0.25, relative_low=0.125, shade_range=WORLD_SHADE_RANGE)


def _front_render_cameras(az: torch.Tensor, device=None, resolution: int = 64):
    """The orbit on which fronts are counted: elevation 10°, distance 2.75, fov 40°, 64² (export and fit alike;
    ``resolution`` for scripts/front_pixels_truth.py)."""
    from ..cameras import cameras_from_spherical

    n = len(az)
    cams = cameras_from_spherical(torch.full((n,), 10.0), az, torch.full((n,), 2.75), torch.full((n,), 40.0),
                                  resolution, resolution)
    return cams if device is None else cams.to(device)


def _truth_front_render(scene):
    """The ground truth on the front-count orbit (its feature size sets the count's threshold)."""
    from ..render.raster import render_mesh_colors

    verts, faces, colors = scene.mesh()
    return lambda az: render_mesh_colors(verts, faces, _front_render_cameras(az), face_colors=colors,
                                         background=(1.0, 1.0, 1.0))[0]


@torch.no_grad()
def fronts_of_representation(model, scene, device) -> tuple[int, list[float]]:
    """Fronts seen over a 360° orbit of the fitted representation's own renders (not the export): the same count as
    ``fronts``, which is taken on the exported mesh, so the two together tell a fit's Janus failure from a small
    front feature lost by the export (mesh extraction and texture baking). Returns (count, the feature's fraction of
    each view), as :func:`~dreamkit.eval.world_metrics.count_fronts`."""
    from .world_metrics import count_fronts

    feature = [c / 255.0 for c in ASYMMETRIC_OBJECTS[scene.shapes[0]].front_feature]
    white = torch.ones(3, device=device)

    def render(az: torch.Tensor) -> torch.Tensor:
        cams = _front_render_cameras(az, device)
        return model.render(cams, background=white.expand(len(cams), 3)).rgb.clamp(0, 1).cpu()

    return count_fronts(render, feature, truth=_truth_front_render(scene), **FRONT_COUNT)


def _score_run(run_dir: Path, scene, row: dict, overrides: Sequence[str] = (),
               motion: Optional[Motion] = None) -> torch.Tensor:
    """Export a finished run's geometry (its recipe's ``export.*``, plus ``overrides``), score it into ``row``;
    returns its 8 turntable frames for the contact sheet. A 4D fit (``motion`` given, or a dynamic representation) is
    scored at its canonical time (τ = 0 by default) against the truth placed there, and its animation against the
    motion (:func:`dreamkit.eval.motion.score_motion`)."""
    from ..config import load_config
    from ..export.extract import mesh_from_representation
    from ..export.video import render_turntable
    from ..run import CONFIG_NAME, load_run
    from ..components import load_representation_from_checkpoint, resolve_device

    _, run_cfg, ckpt = load_run(run_dir)
    if overrides:
        run_cfg = load_config(str(Path(run_dir) / CONFIG_NAME), list(overrides))
    device = resolve_device(str(run_cfg.device))
    model = load_representation_from_checkpoint(run_cfg, ckpt, device)
    dynamic = bool(getattr(model, "dynamic", False))
    motion = motion or Motion("still")
    try:
        if dynamic:
            from ..representations import canonical_scene, canonical_time
            from .motion import MovedScene, score_motion

            tau_c = canonical_time(model)  # the exports' mesh is the scene at τ_c
            mesh, _ = mesh_from_representation(canonical_scene(model), run_cfg.export)
            row.update(score_mesh(mesh, MovedScene(scene, motion, tau_c)))
            if hasattr(model, "displacement"):
                row.update(score_motion(model, mesh, scene, motion,
                                        int(run_cfg.export.get("animation_keyframes", 16))))
            else:  # a 4D field without a deformation: its exports do not animate a mesh
                row.update({"motion": motion.name, "motion_ok": False,
                            "error": "no deformation field: the export holds no animation to score"})
            row["ok"] = bool(row.get("ok", row.get("shape_ok"))) and row["motion_ok"]
        else:
            mesh, _ = mesh_from_representation(model, run_cfg.export)
            row.update(score_mesh(mesh, scene))
            if motion.name != "still":  # a static fit of a moving prompt
                row.update({"motion": motion.name, "motion_ok": False, "ok": False})
    except DreamkitError as err:  # e.g. nothing dense enough to mesh: a failure of the fit, scored as such
        row.update({"error": str(err), "shape_ok": False, "colour_ok": False, "ok": False})
    if scene.kind == "asymmetric":
        row["fronts_fit"], fractions = fronts_of_representation(model, scene, device)
        row["front_px_fit"] = _pixels_per_view(fractions)
    bg = torch.tensor(list(run_cfg.background.color), dtype=torch.float32)
    return render_turntable(model, frames=8, resolution=96, background=bg, device=device)


def rescore_eval(eval_dir: Path, out_dir: Path, overrides: Sequence[str] = ()) -> Path:
    """Score the runs of a finished ``dreamkit eval`` again, without fitting: e.g. with other export settings
    (``export.mesh_method=hull``). Reads ``<eval_dir>/results.csv`` (prompt, run_dir, fit_s); writes a new results
    folder with the same tables."""
    from ..imageio_utils import save_image_grid

    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    table = eval_dir / "results.csv"
    if not table.is_file():
        raise DreamkitError(f"{table} not found — --rescore takes the folder of a finished `dreamkit eval`")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DreamkitError(f"{out_dir} exists and is not empty — pass another --out (results are never overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(table, newline="") as f:
        old_rows = list(csv.DictReader(f))
    heading = f"rescore of {eval_dir}"
    rows, sheets = [], []
    for i, old in enumerate(old_rows):
        object_prompt, motion = split_motion_caption(old["prompt"])
        scene = parse_prompt(object_prompt)
        print(f"[{i + 1}/{len(old_rows)}] {old['prompt']}", flush=True)
        row = {"prompt": old["prompt"], "kind": scene.kind, "fit_s": float(old["fit_s"] or 0),
               "run_dir": old["run_dir"]}
        sheets.append(_score_run(Path(old["run_dir"]), scene, row, overrides, motion))
        rows.append(row)
        save_image_grid(torch.cat(sheets), out_dir / "contact_sheet.png", columns=8)
        _write_tables(rows, out_dir, heading, overrides, quiet=i + 1 < len(old_rows))
    return out_dir


def point_oracle_at_truth(cfg, prompt: str, folder: Path) -> None:
    """With the oracle prior, make the world's ground truth of ``prompt`` its target (exported into ``folder``;
    moving as a motion caption says, for the 4D oracle): the fit then has a known answer. Other priors, or a prompt
    outside the world: nothing."""
    from ..run import slugify

    object_prompt, motion = split_motion_caption(prompt)
    scene = parse_prompt(object_prompt)
    if cfg.prior.type != "oracle" or scene is None:
        return
    gt_path = scene.export(Path(folder) / f"{slugify(object_prompt)}.ply")
    target = {"mesh": str(gt_path), "label": prompt}
    if motion.name != "still":  # the 4D oracle: the truth moving as prompted
        target["motion"] = motion.name
    cfg.prior.targets = [target]


def _fit_and_score(config: str, prompt: str, out_dir: Path, overrides: Sequence[str], threads: int = 0):
    """One eval row: fit ``prompt`` with the recipe, export and score it. Returns (row, turntable frames [8,H,W,3]).
    ``threads`` > 0 sets torch's CPU threads. The prior is built once per process (:func:`cached_prior`)."""
    from ..components import resolve_device
    from ..config import load_config
    from ..priors.configs import cached_prior
    from ..run import fit

    if threads > 0:
        torch.set_num_threads(threads)
    object_prompt, motion = split_motion_caption(prompt)
    scene = parse_prompt(object_prompt)
    items = list(overrides) + [f"prompt={prompt!r}", f"output_dir={out_dir / 'runs'}"]
    cfg = load_config(config, items)
    point_oracle_at_truth(cfg, prompt, out_dir / "gt")  # the ground truth is the oracle's target: a known answer
    t0 = time.perf_counter()
    run_dir = fit(cfg, export=False, prior=cached_prior(cfg.prior, resolve_device(str(cfg.device))))
    seconds = time.perf_counter() - t0
    row = {"prompt": prompt, "kind": scene.kind, "fit_s": round(seconds, 1), "run_dir": str(run_dir)}
    frames = _score_run(run_dir, scene, row, motion=motion)
    return row, frames


def run_eval(config: str, prompts: Sequence[str], out_dir: Path, overrides: Sequence[str] = (),
             jobs: int = 1, address: Optional[str] = None) -> Path:
    """Fit and score every prompt; ``jobs`` > 1 runs that many fits at once on Ray workers (:mod:`dreamkit.engine`;
    each loads the prior once), each with an equal share of the CPU threads (on 2 cores, two one-thread fits at a
    time ran singles20 in 27 min; one two-thread fit at a time takes about 40: docs/tiny_world.md, "The world
    benchmark"). ``address``: an existing Ray cluster. Rows, tables and the contact sheet keep the prompts' order
    whatever order the fits finish in."""
    import os

    from ..config import load_config
    from ..distributed import world_size_of
    from ..engine import Engine, Task, graceful_signals
    from ..imageio_utils import save_image_grid

    prompts = resolve_prompts(prompts)
    jobs = int(jobs)
    if jobs < 1:
        raise DreamkitError(f"--jobs {jobs}: use 1 or more parallel fits")
    first = load_config(config, list(overrides) + [f"prompt={prompts[0]!r}"])  # bad input fails before work
    if world_size_of(first) > 1:
        raise DreamkitError("dreamkit eval runs each fit in one process: drop trainer.devices / trainer.num_nodes "
                            "(to use several GPUs, run fits side by side with --jobs)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DreamkitError(f"{out_dir} exists and is not empty — pass another --out (results are never overwritten)")
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    done: dict[int, tuple[dict, torch.Tensor]] = {}

    def record(i: int, result) -> None:
        done[i] = result
        row = result[0]
        judged = "" if row.get("shape_ok") is None else \
            f" → {row.get('nearest_shape')} {row.get('colour')} {row.get('extent', '')} {'✓' if row.get('ok') else '✗'}"
        print(f"[{len(done)}/{len(prompts)} done] {row['prompt']} ({row['fit_s']} s){judged}", flush=True)
        # tables and contact sheet so far after every prompt: a long benchmark that is stopped keeps what it measured
        order = sorted(done)
        save_image_grid(torch.cat([done[k][1] for k in order]), out_dir / "contact_sheet.png", columns=8)
        _write_tables([done[k][0] for k in order], out_dir, config, overrides, quiet=len(done) < len(prompts))

    parallel = jobs > 1 or address is not None
    threads = max(1, (os.cpu_count() or 1) // jobs) if parallel else 0
    queue = deque(Task(str(i), _fit_and_score, (config, p, out_dir, list(overrides), threads),
                       log=str(out_dir / "logs" / f"{i:03d}.log") if parallel else None, meta={"index": i})
                  for i, p in enumerate(prompts))
    failed: list[str] = []
    engine = Engine(jobs=jobs, address=address, cpus_per_job=threads if parallel else 1,
                    threads=threads if parallel else None)

    def start(task: Task) -> None:
        if not parallel:
            i = task.meta["index"]
            print(f"[{i + 1}/{len(prompts)}] {prompts[i]}", flush=True)

    def finish(outcome) -> None:
        i = outcome.meta["index"]
        if outcome.status == "ok":
            record(i, outcome.value)
            return
        engine.stop()  # an eval is all its prompts: stop at the first failure (the others finish or checkpoint)
        if outcome.status != "interrupted":
            log = f" (log: {out_dir / 'logs' / f'{i:03d}.log'})" if parallel else ""
            failed.append(f"{prompts[i]!r}: {outcome.error}{log}")

    with engine, graceful_signals(engine, "eval") as signals:
        if parallel:
            print(f"{len(prompts)} prompts, {engine.size} fits at a time, {threads} thread(s) each", flush=True)
        engine.run(queue, start, finish)
    if failed:
        raise DreamkitError(f"the fit of {failed[0]} — {len(done)} of {len(prompts)} prompts finished, in "
                            f"{out_dir}")
    if len(done) < len(prompts):
        from ..errors import Interrupted

        signum = (signals or {}).get("signum") or 2
        raise Interrupted(f"interrupted — {len(done)} of {len(prompts)} prompts finished, their rows are in "
                          f"{out_dir}/results.md (an eval does not resume: run it again with another --out)", signum)
    return out_dir


def _motion_tolerances() -> str:
    from .motion import SCALE_TOLERANCE, TRACK_TOLERANCE, YAW_TOLERANCE

    return f"{TRACK_TOLERANCE} units, turn within {YAW_TOLERANCE:.0f}°, scale within {SCALE_TOLERANCE:.0%}"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def _write_tables(rows: list[dict], out_dir: Path, config: str, overrides: Sequence[str], quiet: bool = False) -> None:
    columns = ["prompt", "kind", "ok", "nearest_shape", "shape_ok", "colour", "hue_error", "colour_ok", "size_ok",
               "sections_ok", "fronts", "fronts_fit", "chamfer", "chamfer_norm", "iou", "iou_norm", "fit_s", "error"]
    if any(r.get("kind") == "composition" for r in rows):
        columns[3:3] = ["parts", "parts_ok"]
    if any(r.get("motion") for r in rows):
        columns[3:3] = ["motion", "motion_ok", "track_error", "yaw_error", "scale_error"]
    for r in rows:  # rows of an older table get the verdict from their columns
        if r.get("kind") == "single" and "ok" not in r and r.get("error") in (None, ""):
            r.update(verdict(r))
    with open(out_dir / "results.csv", "w", newline="") as f:
        # the CSV also keeps the diagnostics too wide for the Markdown table
        writer = csv.DictWriter(f, fieldnames=columns + ["extent", "extent_truth", "stray", "sections",
                                                         "sections_truth", "front_px", "front_px_fit", "travel",
                                                         "travel_truth", "yaw_end", "run_dir"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    singles = [r for r in rows if r["kind"] == "single"]
    both = sum(1 for r in singles if r.get("shape_ok") and r.get("colour_ok"))
    right = sum(1 for r in singles if r.get("ok"))
    asym = [r for r in rows if r["kind"] == "asymmetric"]
    lines = [f"# dreamkit eval — `{config}` {' '.join(overrides)}", ""]
    if singles:
        lines.append(f"- **verdict** (`ok`): single objects with the prompted shape and hue, the right size (sorted "
                     f"extents within ±{SIZE_TOLERANCE:.0%} of the truth's) and, for cubes and pyramids, square "
                     f"sections (≥ {SQUARE_SECTIONS}): **{right}/{len(singles)}** ({100 * right / len(singles):.0f}%)")
        lines.append(f"- nearest to the prompted shape and with the right hue (the verdict before 2026-12-04): "
                     f"{both}/{len(singles)} ({100 * both / len(singles):.0f}%)")
    square = [r for r in singles if isinstance(r.get("sections_truth"), float) and r["sections_truth"] >= SQUARE_TRUTH]
    if square:
        lines.append("- horizontal sections of the square-sectioned objects, largest/smallest radius by angle (the "
                     "truth's 1.36–1.38; a solid of revolution's 1.00; `sections` in results.csv): " + ", ".join(
                         f"{r['prompt']} {_fmt(r.get('sections'))}" for r in square))
    moving = [r for r in rows if r.get("motion")]
    if moving:
        follows = sum(1 for r in moving if r.get("motion_ok"))
        lines.append(f"- 4D: the exported animation follows the prompted motion (centroid track within "
                     f"{_motion_tolerances()}): {follows}/{len(moving)}; and the verdict above at τ = 0 too (`ok`): "
                     f"**{sum(1 for r in moving if r.get('ok'))}/{len(moving)}**")
    comps = [r for r in rows if r["kind"] == "composition"]
    if comps:
        both_parts = sum(1 for r in comps if r.get("ok"))
        parts = sum(int(r.get("parts_ok") or 0) for r in comps)
        lines.append(f"- compositions with both parts' shape and colour right (each part scored on the export's "
                     f"faces nearest it): **{both_parts}/{len(comps)}**; parts right: {parts}/{2 * len(comps)}")
    if asym:
        one = sum(1 for r in asym if r.get("fronts") == 1)
        one_fit = sum(1 for r in asym if r.get("fronts_fit") == 1)
        lines.append(f"- asymmetric objects showing exactly one front: {one}/{len(asym)} on the exported mesh "
                     f"(`fronts`), {one_fit}/{len(asym)} on the fitted representation's own renders (`fronts_fit`)")
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    lines += ["", "![contact sheet](contact_sheet.png)", ""]
    (out_dir / "results.md").write_text("\n".join(lines))
    if quiet:
        return
    print("\n".join(lines[:4]), flush=True)
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.csv'}, {out_dir / 'contact_sheet.png'}", flush=True)
