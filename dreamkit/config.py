"""Structured, strict configuration.

A run's config is the merge of (1) the schema defaults below, (2) a YAML recipe (``--config``) and (3) dotlist
overrides (``trainer.max_steps=600``). Polymorphic sections (``representation``, ``prior``, ``guidance``) are
validated against the config dataclass of the component their ``name``/``type`` selects (see ``registry.py``).
Every problem raises :class:`~dreamkit.errors.ConfigError` with a one-line message naming the key and, for unknown
keys, the closest valid ones; the CLI turns it into exit code 2.

Numbers marked ``schedule`` may be schedules (see ``schedule.py``).
"""
import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .schedule import Schedule

SCHEDULE = {"schedule": True}


def sched(default: Any) -> Any:
    """A dataclass field that accepts a number or a schedule."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=SCHEDULE)
    return field(default=default, metadata=SCHEDULE)


@dataclass
class CameraConfig:
    width: int = 64
    height: int = 64
    batch_size: int = 4
    #: [low, high] degrees; each end may be a schedule
    elevation_range: List[Any] = field(default_factory=lambda: [-10.0, 45.0], metadata=SCHEDULE)
    azimuth_range: List[Any] = field(default_factory=lambda: [-180.0, 180.0], metadata=SCHEDULE)
    distance_range: List[Any] = field(default_factory=lambda: [2.5, 3.0], metadata=SCHEDULE)
    fovy_range: List[Any] = field(default_factory=lambda: [35.0, 45.0], metadata=SCHEDULE)
    #: cameras per group: 1, or the prior's V for multi-view priors (groups of V views 360°/V apart in azimuth)
    views: int = 1
    #: frames per clip F (4D): 1, or the video prior's F. Each group's cameras are repeated over F frames at times
    #: τ_i = τ₀ + i·(hi − lo)/F, τ₀ ~ U(lo, lo + (hi − lo)/F) (4D-fy's clip sampling), one diffusion timestep per clip
    frames: int = 1
    #: [low, high] of the scene time τ drawn per group (a 4D representation's clock; [0, 0] = static scenes).
    #: Each end may be a schedule (a static stage first: [0, [299, 0, 1, 300]])
    time_range: List[Any] = field(default_factory=lambda: [0.0, 0.0], metadata=SCHEDULE)
    #: a clip's camera turns this many degrees of azimuth per frame (0 = a still camera per clip; 4D-fy's dynamic
    #: camera)
    clip_azimuth_step: float = 0.0
    #: draw elevation uniformly on the sphere band instead of uniformly in angle
    uniform_sphere: bool = False
    #: append "front view" / "side view" / "back view" / "overhead view" to the prompt (DreamFusion): auto (when the
    #: prior's text encoder was trained on them: Stable Diffusion, not the tiny world's priors) | true | false
    view_dependent_prompting: Any = "auto"
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    #: held-out evaluation / validation orbit (never drawn in training: fixed azimuths offset from the grid)
    eval_views: int = 8
    eval_elevation: float = 20.0
    eval_distance: float = 2.75
    eval_fovy: float = 40.0
    eval_azimuth_offset: float = 22.5
    #: held-out times of 4D scenes: the orbit's k-th view sees time (k + 0.5)/eval_views (true), or every view time 0
    eval_time_sweep: bool = False


@dataclass
class BackgroundConfig:
    #: solid | random | learned
    type: str = "solid"
    color: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    learned_lr: float = 0.01
    #: loss.lambda_unseen's colour scale: matter whose colour (a pixel's composite with the background taken out)
    #: lies within about this RGB distance of the background's shows the prior nothing; its alpha is penalised with
    #: weight exp(-(distance / unseen_sigma)²)
    unseen_sigma: float = 0.1


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    log_every: int = 10
    #: save validation renders every N steps (0 = only at the end)
    val_every: int = 200
    #: atomic checkpoint every N steps (0 = only at the end)
    checkpoint_every: int = 100
    #: clip the global gradient norm of the representation (0 = off)
    grad_clip: float = 0.0
    #: rich progress bar (loss, steps/s, ETA)
    progress: bool = True
    #: float32 matmul precision on CUDA: highest | high | medium
    matmul_precision: str = "high"
    #: stop a run after this many consecutive steps with a non-finite loss (each is skipped and counted)
    nonfinite_patience: int = 20
    #: let cuDNN time its convolution algorithms for each new input shape and keep the fastest (a step's shapes never
    #: change): auto = on CUDA. Not bit-reproducible across machines (cuDNN may pick other algorithms).
    cudnn_benchmark: Any = "auto"
    #: processes (one per GPU, or CPU processes) that share one fit: each renders its share of every step's batch
    #: (camera.batch_size must split evenly), gradients are averaged over them (docs/scaling.md)
    devices: int = 1
    #: auto (ddp when devices × num_nodes > 1) | ddp
    strategy: str = "auto"
    #: machines taking part in the fit (each starts the same command; docs/scaling.md)
    num_nodes: int = 1
    #: sum each Gaussian's gradient over the batch's images exactly (float64; CPU torch rasterizer, sh_degree 0), so
    #: that a fit gives the same numbers however its batch is split over processes (for W = 1, 2, 4, ... processes).
    #: Off: float32 sums, whose rounding differs with the split and which SDS's dynamics amplify (docs/scaling.md)
    exact_batch_sum: bool = False


@dataclass
class ExportConfig:
    #: exports written when a fit ends (also `dreamkit export`): ply | mp4 | glb | obj
    formats: List[str] = field(default_factory=lambda: ["ply"])
    turntable: bool = True
    #: with particles > 1: the particle exported, rendered and scored
    particle: int = 0
    turntable_frames: int = 48
    turntable_fps: int = 24
    turntable_resolution: int = 128
    turntable_elevation: float = 15.0
    turntable_distance: float = 2.75
    turntable_fovy: float = 40.0
    # -- textured mesh exports (glb / obj / mesh): density grid → marching cubes → cleanup → UVs → baked textures
    #: density grid samples per axis for marching cubes
    mesh_resolution: int = 128
    #: density: iso-surface of the density field at mesh_threshold | hull: the visual hull of mesh_views renders'
    #: silhouettes (alpha ≥ mesh_hull_alpha): solid, no inner cavities or faint floaters, but no concavity that no
    #: silhouette shows (a cup's inside); mesh_threshold is unused
    mesh_method: str = "density"
    #: cameras (a Fibonacci lattice) whose silhouettes carve the grid when mesh_method=hull
    mesh_views: int = 48
    #: mesh_method=hull: a render's pixel is inside the silhouette at alpha ≥ this. Lower keeps thin parts that SDS
    #: renders only half opaque (a snowman's carrot nose), higher trims soft fringes
    mesh_hull_alpha: float = 0.5
    #: mesh_method=hull: the silhouettes' size in pixels (0 = mesh_resolution). A fit constrains coverage only at
    #: its own pixel footprint: Gaussians fitted at 64² (σ capped by representation.max_scale) look porous in
    #: finer renders, and a porous silhouette carves holes into the hull; ~64 matches a 64² fit's footprint
    mesh_hull_resolution: int = 0
    #: iso-level of the density (Gaussians: Σ opacity·exp(−½ Mahalanobis²), as DreamGaussian)
    mesh_threshold: float = 1.0
    #: half-size of the extraction cube; 0 = from the representation (Gaussians: the extent of their means)
    mesh_bound: float = 0.0
    #: keep the N largest connected components (0 = all) ...
    mesh_components: int = 1
    #: ... none with fewer faces than this fraction of the largest (0.05 keeps a snowman's three balls, not specks)
    mesh_component_min: float = 0.0
    #: surface colours: renders (projected from the representation's renders onto the mesh, depth-tested: what the
    #: renders show, small front features included) | field (the field's density-weighted colour at the surface,
    #: hidden interior included) | auto (renders with mesh_method=hull, field otherwise)
    mesh_color: str = "auto"
    #: decimate to at most this many faces (0 = no decimation)
    mesh_faces: int = 20000
    #: texture size in texels (square) and seam padding in texels
    texture_size: int = 1024
    texture_padding: int = 8
    #: PBR constants baked into the ORM texture (occlusion is 1)
    mesh_roughness: float = 0.9
    mesh_metallic: float = 0.0
    #: material of the GLB/OBJ: auto (unlit when the baked colours already hold the lighting — projected from the
    #: renders, or from a representation that does not shade its training renders, as every shipped recipe — else
    #: pbr) | pbr (lit metallic-roughness) | unlit (the same material marked KHR_materials_unlit in the GLB and
    #: illum 0 in the MTL, so viewers show the colours as the fit rendered them instead of lighting them again)
    mesh_material: str = "auto"
    #: centre (bounding box centred at the origin) | base (centred in X/Z, bottom at y = 0) | keep
    mesh_origin: str = "centre"
    #: also write mesh_glb_preview.png + mesh_glb_turntable.mp4 (mesh_obj_preview.png for OBJ) rendered from the file
    mesh_preview: bool = True
    # -- 4D representations (deformable_gaussians): the animation over τ ∈ [0, 1]
    #: keyframes of the animated GLB (morph targets) and of the PLY sequence, at τ = k/(N − 1)
    animation_keyframes: int = 16
    #: seconds the animation (τ from 0 to 1) lasts in the GLB
    animation_seconds: float = 2.0


@dataclass
class DreamkitConfig:
    name: str = "dreamkit"
    prompt: str = ""
    negative_prompt: str = ""
    #: parts of a compositional scene: [] (none) | auto (from a tiny-world composition caption) | a list of boxes
    #: {prompt, box_min: [x, y, z], box_max: [x, y, z]} (dreamkit.layout; used by representation.init=layout and the
    #: semantic_sds guidance)
    layout: Any = field(default_factory=list)
    seed: int = 0
    #: N independent representations fitted together (ProlificDreamer's particles; VSD's φ is fitted to all of
    #: them); camera.batch_size cameras each
    particles: int = 1
    output_dir: str = "outputs"
    #: a run folder to continue from its last checkpoint
    resume: Optional[str] = None
    #: a finished run folder whose result initialises this one (mesh / dmtet: its extracted surface and colours,
    #: the coarse-to-fine hand-over of Magic3D and DreamGaussian); ignored when resuming
    init_from: Optional[str] = None
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    representation: Any = field(default_factory=lambda: {"name": "gaussians"})
    prior: Any = field(default_factory=lambda: {"type": "stable-diffusion"})
    guidance: Any = field(default_factory=lambda: {"name": "sds"})
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    #: lambda_<loss name>: weight (number or schedule) of each loss term; unlisted terms do not
    #: count (a representation may still compute and log its regularisers as diagnostics)
    loss: Dict[str, Any] = field(default_factory=lambda: {"lambda_sds": 1.0})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    #: serve the live viewer while fitting (viser, `pip install -e ".[viewer]"`; docs/viewer.md): renders from the
    #: browser's camera, loss, steps/s, Pause / Resume / Export now
    viewer: bool = False
    #: the viewer's port (a busy one → the next free one; 0 = any free port) and host (0.0.0.0 = every interface:
    #: anyone who reaches it can pause and export the run)
    viewer_port: int = 8080
    viewer_host: str = "127.0.0.1"
    #: longer side of the viewer's renders in pixels (0 = auto: 128 on the CPU, 512 on CUDA)
    viewer_resolution: int = 0
    #: the share of the fit's wall time the viewer may spend rendering (training keeps ≥ 1 − this of its steps/s)
    viewer_budget: float = 0.1
    #: a view whose camera did not move gets a picture of newer training every this many seconds (a camera move is
    #: answered at once). Each picture makes the browser draw the page again: in a browser without a GPU (software
    #: WebGL) that is the viewer's main cost to a fit on the same CPU (docs/viewer.md)
    viewer_refresh: float = 15.0
    #: `dreamkit fit` writes the run page <run>/report/index.html when it ends (dreamkit report; docs/report.md)
    report: bool = True


#: top-level keys that change how a fit is watched or reported, never what it computes (left out of the identity of
#: an ablation cell, so adding them kept the ids of finished cells)
PRESENTATION_KEYS = ("viewer", "viewer_port", "viewer_host", "viewer_resolution", "viewer_budget", "viewer_refresh",
                     "report")


# ----------------------------------------------------------------------------------------------------------------
# locating shipped recipes


def shipped_dir(kind: str) -> Path:
    """Folder of shipped ``configs`` or ``assets``: inside the installed wheel, else the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_shipped" / kind, here.parent / kind):
        if candidate.is_dir():
            return candidate
    return here.parent / kind


def shipped_configs() -> list[Path]:
    return sorted(shipped_dir("configs").glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a shipped recipe (``gs_sds`` or ``gs_sds.yaml``)."""
    p = Path(os.path.expanduser(name))
    if p.is_file():
        return p
    for candidate in (shipped_dir("configs") / p.name, shipped_dir("configs") / (p.name + ".yaml")):
        if candidate.is_file():
            return candidate
    available = [c.name for c in shipped_configs()]
    close = difflib.get_close_matches(p.name, available, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"config file not found: {name} — {hint}shipped configs: {', '.join(available) or 'none'}")


# ----------------------------------------------------------------------------------------------------------------
# strict validation with helpful messages


def _closest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(close) + "?"
    return "valid keys: " + ", ".join(sorted(valid))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_against_schema(schema_cls: type, user: Any, prefix: str) -> None:
    """Walk ``user`` (dict-like) against dataclass ``schema_cls``; unknown keys raise with the closest valid keys."""
    if user is None:
        return
    if not isinstance(user, (dict, DictConfig)):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys, got {user!r}")
    by_name = {f.name: f for f in fields(schema_cls)}
    for key in list(user.keys()):
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in by_name:
            valid = [f"{prefix}.{k}" if prefix else k for k in by_name]
            raise ConfigError(f"unknown config key '{full}' — {_closest(full, valid)}")
        f = by_name[key]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            check_against_schema(type(default), user[key], full)


def merge_structured(schema_cls: type, *sources: Any, prefix: str = "") -> DictConfig:
    """Strictly merge ``sources`` over the defaults of ``schema_cls``; wrong types raise ConfigError."""
    for src in sources:
        check_against_schema(schema_cls, src, prefix)
    base = OmegaConf.structured(schema_cls)
    try:
        merged = OmegaConf.merge(base, *[s for s in sources if s is not None])
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        full = f"{prefix}.{key}" if prefix and key != "?" else key
        expected = ""
        try:
            expected = " (expected " + _type_name(OmegaConf.get_type(base, key.split(".")[-1])) + ")"
        except Exception:
            pass
        value = getattr(err, "value", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"wrong value for '{full}': {value!r}{expected} — {msg}") from None
    _check_schedules(schema_cls, merged, prefix)
    return merged


def _check_schedules(schema_cls: type, cfg: DictConfig, prefix: str) -> None:
    for f in fields(schema_cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        value = cfg.get(f.name)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default) and isinstance(value, DictConfig):
            _check_schedules(type(default), value, full)
        elif f.metadata.get("schedule") and value is not None:
            plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            if isinstance(plain, list) and f.type is not Any and "List" in str(f.type):
                if len(plain) != 2:
                    raise ConfigError(f"{full}={plain!r} must be a [low, high] pair (each a number or a schedule)")
                for i, item in enumerate(plain):
                    Schedule.parse(item, f"{full}[{i}]")
            else:
                Schedule.parse(plain, full)


def reject_interpolations(cfg: Any, source: str) -> None:
    """User input (recipes, overrides, a run folder's config.yaml) is taken literally: a value holding an OmegaConf
    interpolation (``${...}``, escaped or not) is refused with one line, so nothing is ever resolved — in
    particular not ``${oc.env:...}``, which would copy an environment variable into the run folder's name, its
    config and its checkpoint — and a saved config reads back exactly as it was written."""
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    for key, value in leaves(plain):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"{source}: {key}={value!r} is an interpolation (${{...}}); dreamkit takes config values "
                              "literally and never resolves them (nor reads the environment) — write the value itself")


def leaves(value: Any, key: str = ""):
    """(dotted key, value) of every scalar in nested dicts and lists (``a.b[2]``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{key}[{i}]")
    else:
        yield key, value


def load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors, unreadable files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys at the top level")
    reject_interpolations(cfg, str(path))
    return cfg


def parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        bad = next((c for c in item if ord(c) < 32 or ord(c) == 127), None)
        if bad is not None:
            raise ConfigError(f"override {item!r} contains a control character ({bad!r} at position {item.index(bad)}) "
                              "— remove it (a stray escape sequence or a pasted newline?)")
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"cannot read override {item!r} — write overrides as key=value, e.g. trainer.max_steps=600")
    # `key=` (nothing after '=') means an empty string, not null
    overrides = [item + "''" if item.split("=", 1)[1].strip() == "" else item for item in overrides]
    try:
        parsed = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot read overrides {overrides}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # yaml scanner errors on odd values
        raise ConfigError(f"cannot read overrides {overrides}: {type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]}") from None
    reject_interpolations(parsed, "override")
    return parsed


#: sections a recipe replaces whole instead of merging into its base's (a term weighted in the base may not exist
#: under the child's guidance)
REPLACED_SECTIONS = ("loss",)
#: sections that a recipe replaces (instead of merging into) when it names another component than its base's: a
#: NeRF recipe on a Gaussian base takes none of the Gaussians' keys
RENAMED_SECTIONS = {"representation": "name", "prior": "type"}


def load_recipe(config: str, _chain: tuple = ()) -> DictConfig:
    """A recipe file (or shipped name) with its ``base:`` chain merged in: a recipe states only what differs from its
    base (``base: gs_sds.yaml``), recursively. ``loss:`` replaces the base's loss section, and so does a
    ``representation:`` with another name or a ``prior:`` with another type; a ``guidance:`` with another name keeps
    only the base's keys that its own guidance has; every other section merges key by key.
    A relative base path is looked up beside the recipe, then among the shipped recipes."""
    path = resolve_config_path(config)
    if path.resolve() in _chain:
        chain = " → ".join(p.name for p in _chain + (path.resolve(),))
        raise ConfigError(f"recipe {path} inherits from itself: {chain}")
    raw = load_yaml(path)
    base_name = raw.pop("base", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"{path}: base must name a recipe (e.g. base: gs_sds.yaml), got {base_name!r}")
    beside = path.parent / base_name
    parent = load_recipe(str(beside) if beside.is_file() else base_name, _chain + (path.resolve(),))
    return merge_recipe(parent, raw)


def merge_recipe(parent: DictConfig, child: DictConfig) -> DictConfig:
    """A child recipe over its base: sections in ``REPLACED_SECTIONS`` and sections whose ``RENAMED_SECTIONS`` key
    differs (another representation name, another prior type) replace the base's; a guidance with another name
    keeps only the base's guidance keys it has (:func:`_keep_shared_guidance_keys`); the rest merge key by key.
    ``parent`` is not modified."""
    parent = parent.copy()
    for section in REPLACED_SECTIONS:
        if section in child and section in parent:
            parent.pop(section)
    for section, key in RENAMED_SECTIONS.items():
        mine, theirs = child.get(section), parent.get(section)
        if (isinstance(mine, DictConfig) and isinstance(theirs, DictConfig) and key in mine
                and mine.get(key) != theirs.get(key)):
            parent.pop(section)
    _keep_shared_guidance_keys(parent, child)
    return OmegaConf.merge(parent, child)


def _keep_shared_guidance_keys(parent: DictConfig, child: DictConfig) -> None:
    """A child recipe that swaps the guidance keeps the base's guidance keys that its own guidance has (gs_vsd.yaml
    takes gs_sds32.yaml's guidance_scale and timestep range) and drops the rest (a composed recipe on an SDS base
    has no guidance_scale of its own: each member has). Unknown guidance names are left to the schema check."""
    from .registry import component_config_class

    mine, theirs = child.get("guidance"), parent.get("guidance")
    if not (isinstance(mine, DictConfig) and isinstance(theirs, DictConfig) and "name" in mine
            and mine.get("name") != theirs.get("name")):
        return
    try:
        keys = {f.name for f in fields(component_config_class("guidance", mine.get("name")))}
    except ConfigError:
        return
    parent["guidance"] = OmegaConf.create({k: v for k, v in OmegaConf.to_container(theirs).items() if k in keys})


def load_config(config: Optional[str], overrides: list[str] = (), base: Optional[DictConfig] = None) -> DictConfig:
    """Recipe file (or shipped name, with its ``base:`` chain) + dotlist overrides → validated, fully resolved
    config."""
    sources: list[Any] = []
    if base is not None:
        sources.append(base)
    if config:
        sources.append(load_recipe(config))
    over = parse_overrides(list(overrides))
    sources.append(over)
    cfg = merge_structured(DreamkitConfig, *sources)
    # loss weights: a recipe's (or a saved run's) loss section replaces the default one, overrides merge into it;
    # with none given, the guidance's own term weighs 1 (lambda_sds for sds, lambda_asd for asd, ...)
    loss = None
    for src in sources[:-1]:  # a saved run's config, then the recipe: each replaces
        if isinstance(src, DictConfig) and src.get("loss") is not None:
            loss = src.loss
    if loss is None:  # every term of the recipe's guidance at weight 1 (sds; vsd and lora; ...)
        from .registry import component_class

        g_cls = component_class("guidance", cfg.guidance.name, "guidance.name")
        names = (g_cls.default_loss_names(cfg) if hasattr(g_cls, "default_loss_names")
                 else getattr(g_cls, "loss_names", (str(cfg.guidance.name),)))
        loss = OmegaConf.create({f"lambda_{n}": 1.0 for n in names})
    if over.get("loss") is not None:
        loss = OmegaConf.merge(loss, over.loss)
    cfg.loss = loss
    # components: validated against the config class of the component they name
    from .registry import component_config_class

    for section, selector in (("representation", "name"), ("prior", "type"), ("guidance", "name")):
        raw = OmegaConf.to_container(cfg[section], resolve=True)
        kind = raw.get(selector)
        cls = component_config_class(section, kind, key=f"{section}.{selector}")
        cfg[section] = merge_structured(cls, raw, prefix=section)  # type: ignore[index]
    from .registry import component_class

    g_cls = component_class("guidance", cfg.guidance.name, "guidance.name")
    if hasattr(g_cls, "resolve_config"):  # composed guidance: its members' own sections
        g_cls.resolve_config(cfg)
    validate_values(cfg)
    return cfg


def validate_values(cfg: DictConfig) -> None:
    """Range checks that types cannot express. Raises ConfigError."""
    def positive(key: str, value: Any, allow_zero: bool = False) -> None:
        if value is None:
            return
        if value < 0 or (value == 0 and not allow_zero):
            need = "≥ 0" if allow_zero else "> 0"
            raise ConfigError(f"{key} must be {need}, got {value}")

    positive("trainer.max_steps", cfg.trainer.max_steps)
    positive("trainer.nonfinite_patience", cfg.trainer.nonfinite_patience)
    positive("trainer.log_every", cfg.trainer.log_every)
    positive("trainer.val_every", cfg.trainer.val_every, allow_zero=True)
    positive("trainer.checkpoint_every", cfg.trainer.checkpoint_every, allow_zero=True)
    positive("trainer.grad_clip", cfg.trainer.grad_clip, allow_zero=True)
    positive("trainer.devices", cfg.trainer.devices)
    positive("trainer.num_nodes", cfg.trainer.num_nodes)
    _check_distributed(cfg)
    positive("camera.width", cfg.camera.width)
    positive("camera.height", cfg.camera.height)
    positive("camera.batch_size", cfg.camera.batch_size)
    positive("camera.eval_views", cfg.camera.eval_views)
    positive("camera.frames", cfg.camera.frames)
    positive("camera.views", cfg.camera.views)
    positive("particles", cfg.particles)
    if not 0 <= int(cfg.export.particle) < int(cfg.particles):
        raise ConfigError(f"export.particle={cfg.export.particle} — this recipe has {cfg.particles} particle(s): "
                          f"use 0 … {int(cfg.particles) - 1}")
    from .prompts import view_prompting_setting

    view_prompting_setting(cfg.camera.view_dependent_prompting)  # auto | true | false, before any work
    positive("export.turntable_frames", cfg.export.turntable_frames)
    positive("export.turntable_resolution", cfg.export.turntable_resolution)
    if int(cfg.export.animation_keyframes) < 2:
        raise ConfigError(f"export.animation_keyframes={cfg.export.animation_keyframes} — use 2 or more")
    positive("export.animation_seconds", cfg.export.animation_seconds)
    if not 0 <= int(cfg.viewer_port) <= 65535:
        raise ConfigError(f"viewer_port={cfg.viewer_port} — use a port in 1 … 65535 (0 = any free port)")
    if int(cfg.viewer_resolution) != 0 and not 16 <= int(cfg.viewer_resolution) <= 4096:
        raise ConfigError(f"viewer_resolution={cfg.viewer_resolution} — use 16 … 4096 pixels (0 = auto)")
    if not float(cfg.viewer_refresh) > 0:
        raise ConfigError(f"viewer_refresh={cfg.viewer_refresh} — seconds between pictures of an unmoved view, > 0")
    if not 0 < float(cfg.viewer_budget) <= 1:
        raise ConfigError(f"viewer_budget={cfg.viewer_budget} — the share of time the viewer may render, in (0, 1] "
                          "(e.g. 0.1)")
    if not str(cfg.prompt).strip():
        raise ConfigError('prompt is empty — pass one, e.g. prompt="a red cube"')
    from .layout import resolve_layout

    resolve_layout(cfg)  # boxes well-formed, layout=auto on a composition caption, before any work
    from .priors.base import resolve_auto

    resolve_auto(cfg.trainer.cudnn_benchmark, True, "trainer.cudnn_benchmark")
    for flag in ("channels_last", "cuda_graph"):
        if flag in cfg.prior:
            resolve_auto(cfg.prior[flag], True, f"prior.{flag}")
    if cfg.background.type not in ("solid", "random", "learned"):
        raise ConfigError(f"background.type={cfg.background.type!r} — use solid, random or learned")
    if len(cfg.background.color) != 3:
        raise ConfigError(f"background.color must have 3 values (RGB in [0, 1]), got {list(cfg.background.color)}")
    if not float(cfg.background.unseen_sigma) > 0:
        raise ConfigError(f"background.unseen_sigma={cfg.background.unseen_sigma}: use a colour distance > 0 "
                          "(0.1 by default; loss.lambda_unseen's scale)")
    for key, value in cfg.loss.items():
        if not str(key).startswith("lambda_"):
            raise ConfigError(f"loss.{key}: loss weights are named lambda_<term>, e.g. loss.lambda_sds=1.0")
        plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        Schedule.parse(plain, f"loss.{key}")
    from .registry import EXPORT_FORMATS

    for fmt in cfg.export.formats:
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"export.formats: unknown format {fmt!r} — {_closest(str(fmt), list(EXPORT_FORMATS))}")
    _check_ranges(cfg)


#: trainer.strategy values
STRATEGIES = ("auto", "ddp")


def _check_distributed(cfg: DictConfig) -> None:
    """trainer.strategy known, and a batch that splits into whole groups per rank and particle."""
    strategy = str(cfg.trainer.strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r} — use auto or ddp (auto: ddp when trainer.devices × "
                          "trainer.num_nodes > 1)")
    if cfg.trainer.exact_batch_sum and (cfg.representation.get("name") != "gaussians"
                                        or int(cfg.representation.get("sh_degree", 0) or 0) > 0):
        raise ConfigError("trainer.exact_batch_sum=true works with representation.name=gaussians and "
                          "representation.sh_degree=0 (the torch rasterizer's per-image sums) — drop it or change them")
    world = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    if world == 1:
        return
    if cfg.get("viewer"):
        raise ConfigError(f"viewer=true watches a fit in one process and trainer.devices × trainer.num_nodes = {world}"
                          " — drop viewer=true (watch the run with `dreamkit view <run folder>`) or use one device")
    if cfg.guidance.get("name") == "composed":
        raise ConfigError("guidance.name=composed draws each step's batch from one of its members, which is not split "
                          "over processes yet — use trainer.devices=1 with it")
    share, views = int(cfg.camera.batch_size), int(cfg.camera.views) * int(cfg.camera.get("frames", 1) or 1)
    if share % world or (share // world) % views:
        raise ConfigError(f"camera.batch_size={share} does not split over {world} processes (trainer.devices × "
                          f"trainer.num_nodes) in whole groups of camera.views × camera.frames = {views} — use a "
                          f"batch_size that is a multiple of {world * views}")


#: the largest image side a run accepts (SDS priors work at ≤ 1024; larger is a typo, not a wish)
MAX_IMAGE_SIDE = 8192


def _check_ranges(cfg: DictConfig) -> None:
    """Values whose type is right but whose meaning is not: non-finite numbers, negative seeds, counts below 1,
    timestep fractions outside [0, 1] or min above max, image sides beyond :data:`MAX_IMAGE_SIDE`."""
    import math

    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number — give a finite value")
    if int(cfg.seed) < 0:
        raise ConfigError(f"seed={cfg.seed} is negative — seeds are integers ≥ 0")
    for side in ("width", "height"):
        if int(cfg.camera[side]) > MAX_IMAGE_SIDE:
            raise ConfigError(f"camera.{side}={cfg.camera[side]} is larger than {MAX_IMAGE_SIDE} — priors work at "
                              "64–1024 pixels; pass a smaller size")
    rep = cfg.representation
    for key in ("num_points", "num_samples", "hidden_dim", "max_gaussians"):
        if key in rep and rep[key] is not None and int(rep[key]) < 1:
            raise ConfigError(f"representation.{key}={rep[key]} must be ≥ 1")
    if "densify" in rep and rep.densify is not None and "max_gaussians" in rep.densify \
            and int(rep.densify.max_gaussians) < 1:
        raise ConfigError(f"representation.densify.max_gaussians={rep.densify.max_gaussians} must be ≥ 1")
    if "sh_degree" in rep and not 0 <= int(rep.sh_degree) <= 3:
        raise ConfigError(f"representation.sh_degree={rep.sh_degree} — use 0, 1, 2 or 3")
    g = cfg.guidance
    if "min_step_percent" in g and "max_step_percent" in g:
        lo = Schedule.parse(to_plain(g.min_step_percent), "guidance.min_step_percent")
        hi = Schedule.parse(to_plain(g.max_step_percent), "guidance.max_step_percent")
        for name, sched_ in (("min_step_percent", lo), ("max_step_percent", hi)):
            bad = [v for v in sched_.values if not 0.0 <= v <= 1.0]
            if bad:
                raise ConfigError(f"guidance.{name} takes fractions of the diffusion timesteps in [0, 1], got "
                                  f"{bad[0]:g} — e.g. guidance.{name}={0.02 if name.startswith('min') else 0.98}")
        for step in sorted(set(lo.steps) | set(hi.steps)):
            if lo(step) > hi(step):
                raise ConfigError(f"guidance.min_step_percent ({lo(step):g}) is above guidance.max_step_percent "
                                  f"({hi(step):g}) at step {step:g} — the minimum must not exceed the maximum")
    check_export_options(cfg.export)
    if "guidance_scale" in g:
        scale = Schedule.parse(to_plain(g.guidance_scale), "guidance.guidance_scale")
        if min(scale.values) < 0:
            raise ConfigError(f"guidance.guidance_scale must be ≥ 0, got {min(scale.values):g}")


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def check_export_options(export: Any) -> None:
    """The export.* choices a fit's exports will use, checked before the fit starts (a typo must not cost a run) by
    the exporters' own checks, and the mesh counts."""
    from .export.bake import check_material
    from .export.extract import check_mesh_options
    from .export.gltf import check_origin

    check_mesh_options(export)
    check_material(export)
    check_origin(export)
    for key in ("mesh_resolution", "mesh_views", "mesh_faces", "texture_size"):
        if key in export and int(export[key]) < 1:
            raise ConfigError(f"export.{key}={export[key]} must be ≥ 1")
