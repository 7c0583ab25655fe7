"""3D Gaussians (Kerbl et al. 2023) as a text-to-3D representation (as DreamGaussian / GaussianDreamer use them).

Parameters (raw, optimised) and their activations:
    means [N, 3]            world positions
    log_scales [N, 3]       scales = exp(log_scales)
    quats [N, 4]            rotation, (w, x, y, z), normalised when used
    opacity_logits [N]      opacities = sigmoid(opacity_logits)
    sh0 [N, 1, 3]           degree-0 SH colour coefficients
    shN [N, K-1, 3]         higher SH bands, K = (sh_degree + 1)²  (absent when sh_degree = 0)
    group [N]               with ``init=layout`` only: the layout box each Gaussian started in (integer, frozen;
                            densification copies it to the children, so a part keeps its Gaussians)
"""
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from torch import nn

from ..cameras import Cameras
from ..config import sched
from ..errors import ConfigError
from ..render.sh import eval_sh, rgb_to_sh0
from ..render.splat import rasterize_gaussians
from ..types import RenderOutput
from .gaussian_strategy import DensifyConfig
from .regularizers import alpha_regularizers


@dataclass
class GaussianConfig:
    name: str = "gaussians"
    #: sphere (uniform in a ball) | points (a PLY point cloud, init_path) | mesh (points on a mesh surface, init_path)
    #: | layout (a ball of init_radius × the box in each box of the recipe's ``layout``, each its own group)
    init: str = "sphere"
    init_path: Optional[str] = None
    num_points: int = 4096
    init_radius: float = 0.5
    init_opacity: float = 0.1
    #: initial scale; 0 = mean distance to the 3 nearest neighbours (3DGS)
    init_scale: float = 0.0
    #: initial colour for the sphere init (RGB in [0, 1]); random colours if empty
    init_color: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    sh_degree: int = 0
    #: raise the active SH degree by one every N steps (0 = all bands from the start)
    sh_degree_interval: int = 500
    #: per-attribute learning rates (numbers or schedules)
    lr_means: Any = sched(1e-3)
    lr_scales: Any = sched(5e-3)
    lr_quats: Any = sched(5e-3)
    lr_opacities: Any = sched(5e-2)
    lr_sh0: Any = sched(1e-2)
    lr_shN: Any = sched(5e-4)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    #: keep every mean inside a ball of this radius around the origin (0 = unbounded). The scene bound of
    #: DreamFusion and threestudio (their bounding sphere/box ``radius``), applied to Gaussians by projecting the
    #: means back onto the ball after each optimizer step: outside the region that every sampled camera sees, the
    #: prior's gradient is inconsistent and fits grow there unchecked (a cube growing into a column out of frame)
    bound_radius: float = 0.0
    #: hold the object at this radius (0 = off): after each optimizer step from ``object_radius_start`` on, the
    #: Gaussians are scaled about their centre (means and scales alike, so the shape is kept) so that the radius of
    #: the opaque ones (opacity ≥ 0.2; the 0.99 quantile of their distances from the centre of their bounding box) is
    #: this, by at most ±``object_radius_rate`` per step. A size prior for priors that cannot tell size at low noise:
    #: the tiny world normalises every object to a bounding radius of 0.65 (world objects 0.55–0.69), which a 32²
    #: prior's SDS does not hold (fits regress to ~1.0 across, cubes 1.3× too large, capsules 0.75×)
    object_radius: float = 0.0
    object_radius_start: int = 0
    object_radius_rate: float = 0.02
    #: what ``object_radius`` measures: ``means`` (the opaque Gaussians' centres, as above) or ``splats`` (how far
    #: each opaque Gaussian's own alpha-0.5 contour reaches: its centre's distance plus σ_max·√(2 ln 2o), the
    #: silhouette's radius that the visual hull export sees; large outer splats make it 0.1–0.2 more than the means')
    object_radius_of: str = "means"
    #: cap every Gaussian's σ along each axis at this (scene units; 0 = off), after each optimizer step. With the
    #: means held by ``object_radius``, SDS still grows the object's apparent size through its outer splats: a 64²
    #: red cube's means spanned 0.66 × 0.69 × 0.65 (truth 0.74³) while 358 opaque splats with σ up to ~0.1 set its
    #: silhouette at 0.82 × 0.87 × 0.79 (spikes at the corners). 3DGS prunes world-space-large Gaussians for the same
    #: reason (Kerbl et al. 2023); a cap keeps them and their coverage
    max_scale: float = 0.0
    #: auto (gsplat on CUDA when installed, else the PyTorch twin) | torch | gsplat
    backend: str = "auto"
    #: tile size of the PyTorch twin (0 = automatic)
    tile_size: int = 0


def _check_object_radius_of(of: Any) -> str:
    """``representation.object_radius_of``, validated (ConfigError naming the choices)."""
    if str(of) not in ("means", "splats"):
        raise ConfigError(f"representation.object_radius_of={of!r} — use means (the opaque Gaussians' centres) or "
                          "splats (how far their alpha-0.5 contours reach)")
    return str(of)


class GaussianModel(nn.Module):
    loss_names: tuple[str, ...] = ("sparsity", "opaque", "containment")

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None, layout: Optional[list] = None):
        """``layout``: the recipe's boxes (:func:`dreamkit.layout.resolve_layout`), needed by ``init=layout``."""
        super().__init__()
        if cfg.init not in ("sphere", "points", "mesh", "layout"):
            raise ConfigError(f"representation.init={cfg.init!r} — use sphere, points, mesh or layout")
        if cfg.init == "layout" and not layout:
            raise ConfigError("representation.init=layout needs the recipe's layout boxes — set layout=auto (a "
                              "tiny-world composition prompt) or layout=[{prompt, box_min, box_max}, ...]")
        self.layout = list(layout or []) if cfg.init == "layout" else []
        if self.layout:
            self.register_buffer("box_centres", torch.stack([b.centre for b in self.layout]), persistent=False)
            self.register_buffer("box_halves", torch.stack([b.half for b in self.layout]), persistent=False)
        if not 0 <= cfg.sh_degree <= 3:
            raise ConfigError(f"representation.sh_degree={cfg.sh_degree} — use 0, 1, 2 or 3")
        if cfg.bound_radius < 0:
            raise ConfigError(f"representation.bound_radius={cfg.bound_radius} — use a radius > 0, or 0 for no bound")
        if float(getattr(cfg, "max_scale", 0.0)) < 0:
            raise ConfigError(f"representation.max_scale={cfg.max_scale} — use a σ > 0 (scene units), or 0 for no cap")
        if cfg.backend not in ("auto", "torch", "gsplat"):
            raise ConfigError(f"representation.backend={cfg.backend!r} — use auto, torch or gsplat")
        _check_object_radius_of(getattr(cfg, "object_radius_of", "means"))
        self.cfg = cfg
        self.params = nn.ParameterDict()
        from ..registry import component_class

        self.strategy = component_class("strategy", cfg.densify.strategy, "representation.densify.strategy")(cfg.densify)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        means, colors = self._initial_points(generator)
        self._set_from_points(means, colors)
        if self.layout:
            self.params["group"] = nn.Parameter(self._initial_groups(), requires_grad=False)

    # -- initialisation -------------------------------------------------------------------------------------------
    def _initial_points(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        n = cfg.num_points
        if cfg.init == "layout":
            return self._layout_points(generator)
        if cfg.init == "sphere":
            means = uniform_ball(n, generator, cfg.init_radius)
            return means, self._initial_colors(n, generator)
        if not cfg.init_path:
            raise ConfigError(f"representation.init={cfg.init} needs representation.init_path=<file>")
        from ..assets import asset_path

        path = asset_path(cfg.init_path)
        import trimesh

        loaded = trimesh.load(str(path), process=False)
        if cfg.init == "points":
            pts = torch.as_tensor(loaded.vertices, dtype=torch.float32)
            cols = getattr(getattr(loaded, "visual", None), "vertex_colors", None)
            if cols is None and hasattr(loaded, "colors") and len(loaded.colors):
                cols = loaded.colors
            colors = (torch.as_tensor(cols[:, :3], dtype=torch.float32) / 255.0 if cols is not None and len(cols)
                      else torch.full_like(pts, 0.5))
            return pts, colors
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.dump(concatenate=True)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        pts, face_idx = trimesh.sample.sample_surface(loaded, n, seed=seed)
        try:
            face_cols = loaded.visual.face_colors[face_idx, :3] / 255.0
        except Exception:
            face_cols = torch.full((n, 3), 0.5).numpy()
        return torch.as_tensor(pts, dtype=torch.float32), torch.as_tensor(face_cols, dtype=torch.float32)

    def _initial_colors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``init_color`` for every point, or random colours when it is not an RGB triple."""
        if len(self.cfg.init_color) == 3:
            return torch.tensor(list(self.cfg.init_color), dtype=torch.float32).expand(n, 3).clone()
        return torch.rand(n, 3, generator=generator)

    def _layout_counts(self) -> list[int]:
        """num_points split evenly over the layout's boxes (the first ones take the remainder)."""
        n, k = self.cfg.num_points, len(self.layout)
        return [n // k + (i < n % k) for i in range(k)]

    def _layout_points(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Each box's share of num_points uniform in an ellipsoid of init_radius × the box's half-extents around its
        centre (init_radius ≤ 1 keeps every point in its own box)."""
        shrink = min(float(self.cfg.init_radius), 1.0)
        means = torch.cat([box.centre + uniform_ball(count, generator) * box.half * shrink
                           for box, count in zip(self.layout, self._layout_counts())])
        return means, self._initial_colors(len(means), generator)

    def _initial_groups(self) -> torch.Tensor:
        """Each point's box, in the order :meth:`_layout_points` made them."""
        return torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(self._layout_counts())])

    def _set_from_points(self, means: torch.Tensor, colors: torch.Tensor) -> None:
        cfg = self.cfg
        n = means.shape[0]
        if cfg.init_scale > 0:
            scale = torch.full((n,), float(cfg.init_scale))
        else:
            scale = knn_mean_distance(means, k=3).clamp_min(1e-4)
        k = (cfg.sh_degree + 1) ** 2
        self.params["means"] = nn.Parameter(means.clone())
        self.params["log_scales"] = nn.Parameter(torch.log(scale)[:, None].repeat(1, 3))
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        self.params["quats"] = nn.Parameter(quats)
        self.params["opacity_logits"] = nn.Parameter(torch.logit(torch.full((n,), float(cfg.init_opacity))))
        self.params["sh0"] = nn.Parameter(rgb_to_sh0(colors.clamp(0, 1))[:, None, :])
        if k > 1:
            self.params["shN"] = nn.Parameter(torch.zeros(n, k - 1, 3))

    def resize_to(self, shapes: dict[str, torch.Size]) -> None:
        """Reallocate parameters to checkpoint shapes (Gaussians are added and removed during training)."""
        for name, shape in shapes.items():
            if name in self.params and self.params[name].shape != shape:
                old = self.params[name]
                self.params[name] = nn.Parameter(torch.zeros(shape, dtype=old.dtype, device=old.device),
                                                 requires_grad=old.requires_grad)

    # -- activations ----------------------------------------------------------------------------------------------
    @property
    def colors_hold_lighting(self) -> bool:
        """Gaussians have no shading model: their colours are what the renders show, lighting included (the export
        protocol's flag for an unlit material, see :func:`dreamkit.export.bake.material_is_unlit`)."""
        return True

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["log_scales"])

    @property
    def quats(self) -> torch.Tensor:
        return self.params["quats"]

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.params["opacity_logits"])

    @property
    def sh_coeffs(self) -> torch.Tensor:
        if "shN" in self.params:
            return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)
        return self.params["sh0"]

    def active_sh_degree(self, step: Optional[int]) -> int:
        if step is None or self.cfg.sh_degree_interval <= 0:
            return self.cfg.sh_degree
        return min(self.cfg.sh_degree, step // self.cfg.sh_degree_interval)

    # -- the interface --------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """One optimizer group per attribute, each with its own (scheduled) learning rate."""
        lrs = {"means": "lr_means", "log_scales": "lr_scales", "quats": "lr_quats",
               "opacity_logits": "lr_opacities", "sh0": "lr_sh0", "shN": "lr_shN"}
        return [{"name": f"gaussians.{name}", "params": [p], "lr_schedule": getattr(self.cfg, lrs[name]),
                 "lr_key": f"representation.{lrs[name]}", "eps": 1e-15}
                for name, p in self.params.items() if name in lrs]

    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               part: Optional[int] = None, zoom: float = 1.0, exact_sum: bool = False, **_: Any) -> RenderOutput:
        """cameras [B] → RenderOutput with rgb [B,H,W,3], alpha/depth [B,H,W,1]; extras means2d [B,N,2], radii.

        With a layout, also extras["groups"] [B,H,W,K]: each group's share of the alpha, rendered like colour (the
        one-hot group id as K more channels of the same compositing; Σ_k = alpha). ``part=k`` renders group k alone,
        moved so that its box's centre is at the origin (the object-alone render of Set-the-Scene / CompoNeRF, seen
        by cameras that look at the origin, as the prior's objects are) and scaled by ``zoom`` about it (a part of a
        scene is smaller than the objects the prior was shown alone); the other Gaussians get opacity 0."""
        means, opacities, scales = self.means, self.opacities, self.scales
        if part is not None:
            if not self.layout or not 0 <= int(part) < len(self.layout):
                raise ConfigError(f"render(part={part}): this representation has {len(self.layout)} layout group(s)")
            mine = self.params["group"] == int(part)
            means = (means - self.box_centres[int(part)]) * float(zoom)
            scales = scales * float(zoom)
            opacities = opacities * mine
        onehot = None
        if self.layout and part is None:
            onehot = torch.nn.functional.one_hot(self.params["group"], len(self.layout)).to(means.dtype)
        out = self._splat(cameras, means, self.quats, scales, background, step, opacities, onehot, exact_sum)
        if part is not None:
            out.extras["part"] = int(part)
        return out

    def _splat(self, cameras: Cameras, means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
               background: Optional[torch.Tensor], step: Optional[int], opacities: Optional[torch.Tensor] = None,
               channels: Optional[torch.Tensor] = None, exact_sum: bool = False) -> RenderOutput:
        """Rasterize these means, rotations and scales with the model's colours (SH seen from each camera) and
        opacities; ``channels`` [N, K] are composited as K more colour channels (over 0) into extras["groups"]."""
        opacities = self.opacities if opacities is None else opacities
        degree = self.active_sh_degree(step)
        if degree == 0:
            colors = (self.params["sh0"][:, 0] * 0.28209479177387814 + 0.5).clamp_min(0)
        else:
            dirs = means[None] - cameras.positions[:, None]  # [B, N, 3]
            dirs = torch.nn.functional.normalize(dirs, dim=-1)
            coeffs = self.sh_coeffs[None].expand(len(cameras), -1, -1, -1)
            colors = eval_sh(degree, coeffs, dirs)
        k = 0 if channels is None else channels.shape[-1]
        if k:
            colors = torch.cat([colors, channels.expand(*colors.shape[:-1], k)], -1)
            if background is not None:
                background = torch.cat([background.expand(len(cameras), 3),
                                        background.new_zeros(len(cameras), k)], -1)
        rgb, alpha, depth, meta = rasterize_gaussians(
            means, quats, scales, opacities, colors, cameras.viewmats, cameras.K,
            cameras.width, cameras.height, background=background, backend=self.cfg.backend,
            tile_size=self.cfg.tile_size or None, exact_sum=exact_sum,
        )
        extras = {"means2d": meta.get("means2d"), "radii": meta.get("radii"), "exact_sum": exact_sum}
        if k:
            rgb, extras["groups"] = rgb[..., :3], rgb[..., 3:]
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, extras=extras)

    @classmethod
    def from_params(cls, cfg: Any, params: dict, strategy: Any = None) -> "GaussianModel":
        """A model holding these parameter tensors (no initialisation; not trainable), e.g. a deformable model's
        Gaussians at one time for the exporters."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.cfg = cfg
        model.layout = []
        model.params = nn.ParameterDict({name: nn.Parameter(value, requires_grad=False)
                                         for name, value in params.items() if name != "group"})
        if strategy is None:
            from ..registry import component_class

            strategy = component_class("strategy", cfg.densify.strategy, "representation.densify.strategy")(cfg.densify)
        model.strategy = strategy
        return model

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        """loss_sparsity and loss_opaque of the render's alpha (:func:`alpha_regularizers`), as NeRF's, and with a
        layout loss_containment (:func:`dreamkit.layout.containment_penalty`: each Gaussian's mean inside its
        group's box); they count only when the recipe gives them a weight (``loss.lambda_sparsity``, ...)."""
        terms = alpha_regularizers(out.alpha)
        if self.layout:
            from ..layout import containment_penalty

            terms["loss_containment"] = containment_penalty(self.means, self.params["group"], self.box_centres,
                                                            self.box_halves)
        return terms

    def post_step(self, step: int, out: RenderOutput, optimizer: Optional[torch.optim.Optimizer],
                  cameras: Cameras, generator: Optional[torch.Generator] = None) -> dict:
        info = self.strategy.step_post_backward(self, optimizer, step, out.extras, cameras.width, cameras.height,
                                                generator)
        if self.cfg.bound_radius > 0:
            self.project_into_bound()
        if self.cfg.object_radius > 0 and step >= self.cfg.object_radius_start:
            info["object_scale"] = self.hold_object_radius()
        if float(getattr(self.cfg, "max_scale", 0.0)) > 0:
            self.cap_scales(float(self.cfg.max_scale))
        return info

    @torch.no_grad()
    def cap_scales(self, max_scale: float) -> None:
        """Clamp every σ to at most ``max_scale`` (in place; the optimizer state is kept)."""
        self.params["log_scales"].clamp_(max=math.log(max_scale))

    @torch.no_grad()
    def object_radius(self, min_opacity: float = 0.2, quantile: float = 0.99,
                      of: str = "means") -> tuple[torch.Tensor, torch.Tensor]:
        """(centre [3], radius) of the opaque Gaussians: the centre of their means' bounding box (0.01–0.99
        quantiles per axis) and the ``quantile`` of their distances from it (all Gaussians when none is opaque).
        ``of="splats"``: the distances reach each Gaussian's alpha-0.5 contour along its largest axis instead,
        |μ − c| + σ_max·√(2 ln 2o) (a lone Gaussian's alpha o·exp(−d²/2σ²) is 0.5 there; 0 for o ≤ 0.5)."""
        means = self.means.detach()
        opacity = self.opacities.detach()
        solid = opacity >= min_opacity
        keep = solid if int(solid.sum()) >= 8 else torch.ones_like(solid)
        pts = means[keep]
        lo, hi = torch.quantile(pts, 0.01, dim=0), torch.quantile(pts, 0.99, dim=0)
        centre = (lo + hi) / 2
        dist = (pts - centre).norm(dim=-1)
        if _check_object_radius_of(of) == "splats":
            reach = torch.sqrt(2.0 * torch.log((2.0 * opacity[keep]).clamp_min(1.0)))
            dist = dist + self.scales.detach()[keep].amax(-1) * reach
        return centre, torch.quantile(dist, quantile)

    @torch.no_grad()
    def hold_object_radius(self) -> float:
        """Scale the Gaussians about their centre toward ``object_radius`` (see the config); returns the factor."""
        centre, radius = self.object_radius(of=str(self.cfg.object_radius_of))
        rate = float(self.cfg.object_radius_rate)
        factor = (float(self.cfg.object_radius) / max(float(radius), 1e-6))
        factor = min(max(factor, 1.0 - rate), 1.0 + rate)
        means = self.params["means"]
        means.sub_(centre).mul_(factor).add_(centre)
        self.params["log_scales"].add_(math.log(factor))
        return factor

    @torch.no_grad()
    def project_into_bound(self) -> None:
        """Move means farther than ``bound_radius`` from the origin onto the sphere of that radius (in place; the
        optimizer state is kept; no host sync)."""
        means = self.params["means"]
        norm = means.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        means.mul_((float(self.cfg.bound_radius) / norm).clamp_max(1.0))

    # -- checkpoint state beyond parameters ---------------------------------------------------------------------
    def extra_state_dict(self) -> dict:
        return {"strategy": self.strategy.state_dict()}

    def load_extra_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state.get("strategy", {}))


def uniform_ball(n: int, generator: torch.Generator, radius: float = 1.0) -> torch.Tensor:
    """[n, 3] points uniform in a ball of ``radius`` around the origin (a random direction, distance ∝ u^(1/3))."""
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    return direction * (radius * torch.rand(n, 1, generator=generator) ** (1 / 3))


def knn_mean_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """[N, 3] → [N] mean distance to the k nearest other points (3DGS's scale initialisation).

    Distances are differences, not torch.cdist's default ``|x|² + |y|² - 2x·y`` matrix product: that one loses
    the digits of nearby points and came out differently from one process to another on the same machine (MKL's
    GEMM), so the same seed gave different initial scales and a fit was not reproducible (nor its resume exact)."""
    n = points.shape[0]
    if n <= 1:
        return torch.ones(n)
    k = min(k, n - 1)
    out = []
    for start in range(0, n, chunk):
        d = torch.cdist(points[start:start + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = math.inf
        out.append(d.topk(k, largest=False).values.mean(dim=1))
    return torch.cat(out)
