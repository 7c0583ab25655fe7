"""A NeRF for text-to-3D: hash-grid field + small MLPs, volume-rendered (DreamFusion / Magic3D style).

Field (Müller et al. 2022 encoding; Magic3D's coarse stage uses the same shape of model):
    x ∈ aabb → [0,1]³ → HashGridEncoding → density MLP → (raw σ, geometry features)
    σ = activation(raw σ + blob_density·(1 − ‖x‖/blob_radius))   (the density blob of DreamFusion / Magic3D, which
                                                                 gives the optimisation an object to start from)
    albedo = sigmoid(albedo MLP(geometry features))
Normals (optional): −∇σ/‖∇σ‖ by autograd ("analytic") or central differences ("finite_difference").
Shading: "albedo" (colour = albedo), or "diffuse": albedo·(ambient + (1−ambient)·max(0, n·l)) for a fixed light l.
Rendering: :func:`dreamkit.render.volume.render_field` with an occupancy grid refreshed in ``post_step``.

:class:`VolumeModel` holds everything but the field, so :mod:`.triplane` reuses it.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import torch
from torch import nn

from ..cameras import Cameras
from ..config import sched
from ..errors import ConfigError
from ..render.volume import OccupancyGrid, generate_rays, render_field
from ..types import RenderOutput
from .encodings import HashGridConfig, hash_grid_from_config
from .regularizers import alpha_regularizers

__all__ = ["NeRFConfig", "NeRFModel", "VolumeModel", "trunc_exp", "mlp"]


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (torch-ngp / threestudio's trunc_exp): exp(x), d/dx = exp(min(x, 15))."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ReLU; a linear output."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


@dataclass
class VolumeRenderConfig:
    """Fields shared by the volume-rendered representations (NeRF, triplane)."""

    #: half-size of the cube [-r, r]³ that holds the object
    radius: float = 0.6
    #: uniform samples per ray across the box (before occupancy skipping)
    num_samples: int = 64
    #: occupancy grid: cells per side, refresh period (steps), threshold on σ·step, EMA decay; resolution 0 = off
    occ_resolution: int = 32
    occ_update_every: int = 16
    occ_threshold: float = 0.01
    occ_decay: float = 0.95
    #: seed of the stratified-sampling jitter generator (its state is checkpointed)
    sample_seed: int = 0
    #: drop samples whose transmittance is below this (nerfacc's early_stop_eps; 0 = keep all)
    early_stop_eps: float = 1e-4
    #: trunc_exp | softplus
    density_activation: str = "trunc_exp"
    #: density blob (DreamFusion / Magic3D): raw σ += blob_density·(1 − ‖x‖/blob_radius)
    blob_density: float = 10.0
    blob_radius: float = 0.5
    #: none | analytic | finite_difference
    normals: str = "none"
    finite_difference_eps: float = 0.01
    #: albedo | diffuse
    shading: str = "albedo"
    ambient: float = 0.3
    light_direction: List[float] = field(default_factory=lambda: [0.3, 1.0, 0.6])
    #: decoder MLPs shared by NeRF and triplane
    hidden_dim: int = 32
    density_layers: int = 1
    albedo_layers: int = 1
    geo_feature_dim: int = 15
    lr_network: Any = sched(1e-3)
    #: 4D: a static field plus a space-time one (4D-fy's feat(x, τ) = H₃(x) + H₄(x, τ); here H₄ is a K-planes
    #: factorisation over (x, y, z, τ), Fridovich-Keil et al. 2023): its features, through a zero-initialised linear
    #: map, are added to the static encoding's, so the field starts static. The cameras' time τ selects the field
    time_field: bool = False
    time_resolution: int = 16
    time_space_resolution: int = 32
    lr_time: Any = sched(1e-2)


@dataclass
class NeRFConfig(VolumeRenderConfig, HashGridConfig):
    """A hash grid (Müller et al. 2022, fields of :class:`HashGridConfig`) + the shared volume decoder."""

    name: str = "nerf"


class VolumeModel(nn.Module):
    """Base of volume-rendered representations; subclasses implement ``features(points01) -> [N, D]`` (and call
    ``_init_decoder(D, generator)``) plus ``parameter_groups``."""

    loss_names: tuple[str, ...] = ("orient", "sparsity", "opaque")

    def _init_volume(self, cfg: Any) -> None:
        if cfg.density_activation not in ("trunc_exp", "softplus"):
            raise ConfigError(f"representation.density_activation={cfg.density_activation!r} — use trunc_exp or "
                              "softplus")
        if cfg.normals not in ("none", "analytic", "finite_difference"):
            raise ConfigError(f"representation.normals={cfg.normals!r} — use none, analytic or finite_difference")
        if cfg.shading not in ("albedo", "diffuse"):
            raise ConfigError(f"representation.shading={cfg.shading!r} — use albedo or diffuse")
        if cfg.shading == "diffuse" and cfg.normals == "none":
            raise ConfigError("representation.shading=diffuse needs normals: set representation.normals=analytic "
                              "or finite_difference")
        r = float(cfg.radius)
        self.register_buffer("aabb", torch.tensor([-r, -r, -r, r, r, r]), persistent=False)
        self.occupancy = OccupancyGrid(self.aabb, cfg.occ_resolution) if cfg.occ_resolution > 0 else None
        # stratified-sampling jitter comes from a generator of our own, saved in checkpoints (exact resume)
        self.sample_generator = torch.Generator().manual_seed(int(cfg.sample_seed))
        light = torch.nn.functional.normalize(torch.tensor(list(cfg.light_direction), dtype=torch.float32), dim=0)
        self.register_buffer("light", light, persistent=False)

    # -- the field: features(points) → shared decoder (density + geometry features → albedo) ---------------------
    def _init_decoder(self, feature_dim: int, generator: torch.Generator) -> None:
        """Density and albedo MLPs, initialised from the run's generator without touching the global RNG."""
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            self.density_net = mlp(feature_dim, cfg.hidden_dim, 1 + cfg.geo_feature_dim, cfg.density_layers)
            self.albedo_net = mlp(cfg.geo_feature_dim, cfg.hidden_dim, 3, cfg.albedo_layers)

    def features(self, points01: torch.Tensor) -> torch.Tensor:
        """points [N, 3] in [0, 1]³ → encoded features [N, D] (hash grid, triplane, ...)."""
        raise NotImplementedError

    def _raw(self, points01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(points01)
        if getattr(self, "time_planes", None) is not None:
            feat = feat + self.time_out(self._time_features(points01))
        h = self.density_net(feat)
        return h[..., 0], h[..., 1:]

    # -- 4D (time_field): K-planes over (x, y, z, τ) -----------------------------------------------------------
    def _init_time_field(self, feature_dim: int, generator: torch.Generator) -> None:
        """Create the space-time planes (spatial ones in U(0.1, 0.5), time ones at 1, as K-planes) and the
        zero-initialised map of their product into the static features (after the static field: a static recipe
        draws the same numbers as before)."""
        from .deformable import PLANES

        cfg = self.cfg
        self._tau = 0.0
        self.time_planes = None
        if not getattr(cfg, "time_field", False):
            return
        R, T = int(cfg.time_space_resolution), int(cfg.time_resolution)
        if R < 2 or T < 2:
            raise ConfigError(f"representation.time_space_resolution={R} and time_resolution={T} must be ≥ 2")
        planes = []
        for a, b in PLANES:
            shape = (1, feature_dim, T if b == 3 else R, R)
            planes.append(nn.Parameter(torch.ones(shape) if b == 3
                                       else 0.1 + 0.4 * torch.rand(shape, generator=generator)))
        self.time_planes = nn.ParameterList(planes)
        self.time_out = nn.Linear(feature_dim, feature_dim)
        nn.init.zeros_(self.time_out.weight)
        nn.init.zeros_(self.time_out.bias)

    @property
    def dynamic(self) -> bool:
        """Whether the field changes with the cameras' time (``time_field``)."""
        return getattr(self, "time_planes", None) is not None

    def _time_features(self, points01: torch.Tensor) -> torch.Tensor:
        from .deformable import kplanes_product

        n = points01.shape[0]
        tau = torch.full((n, 1), float(self._tau) * 2 - 1, dtype=points01.dtype, device=points01.device)
        return kplanes_product(self.time_planes, torch.cat([points01 * 2 - 1, tau], -1))

    def _time_groups(self) -> list[dict]:
        if not self.dynamic:
            return []
        return [{"name": "time.planes", "params": list(self.time_planes), "lr_schedule": self.cfg.lr_time,
                 "lr_key": "representation.lr_time"},
                {"name": "time.network", "params": list(self.time_out.parameters()),
                 "lr_schedule": self.cfg.lr_network, "lr_key": "representation.lr_network"}]

    def at_time(self, tau: float) -> "VolumeModel":
        """A copy of this field frozen at time τ (for exporters: the mesh at τ)."""
        import copy

        clone = copy.deepcopy(self)
        clone._tau = float(tau)
        clone.time_planes_fixed = True
        return clone

    def _albedo(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.albedo_net(feat))

    def _network_group(self, prefix: str, **extra: Any) -> dict:
        """The optimizer group of the decoder MLPs (``lr_network``)."""
        return {"name": f"{prefix}.network",
                "params": list(self.density_net.parameters()) + list(self.albedo_net.parameters()),
                "lr_schedule": self.cfg.lr_network, "lr_key": "representation.lr_network", **extra}

    def _activate(self, raw: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.blob_density != 0:
            raw = raw + cfg.blob_density * (1 - points.norm(dim=-1) / cfg.blob_radius)
        return trunc_exp(raw) if cfg.density_activation == "trunc_exp" else torch.nn.functional.softplus(raw)

    def _normalise(self, points: torch.Tensor) -> torch.Tensor:
        lo, hi = self.aabb[:3], self.aabb[3:]
        return ((points - lo) / (hi - lo)).clamp(0.0, 1.0)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] (world) → σ [N] ≥ 0."""
        raw, _ = self._raw(self._normalise(points))
        return self._activate(raw, points)

    # -- the mesh-export protocol of dreamkit.export.extract (marching cubes on σ, colours from the albedo) -------
    @property
    def colors_hold_lighting(self) -> bool:
        """With ``shading=albedo`` the renders show the albedo as it is, so what it learned holds the lighting that the
        prior's images had; ``diffuse`` shading learns an albedo under a light."""
        return self.cfg.shading == "albedo"

    @torch.no_grad()
    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] → σ [N] (no gradients), for marching cubes."""
        return self.density(points.to(self.aabb.device))

    @torch.no_grad()
    def query_color(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] → albedo [N, 3] in [0, 1], for vertex colours and texture baking."""
        raw, feat = self._raw(self._normalise(points.to(self.aabb.device)))
        return self._albedo(feat)

    def mesh_bound(self) -> np.ndarray:
        """[2, 3] box that contains the field (its AABB)."""
        return self.aabb.detach().cpu().numpy().reshape(2, 3)

    def field(self, points: torch.Tensor, directions: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """points [N, 3], directions [N, 3] (unused: albedo is view-independent) → {"sigma" [N], "rgb" [N, 3],
        "normal" [N, 3] when normals are on}."""
        cfg = self.cfg
        analytic = cfg.normals == "analytic"
        if analytic:
            points = points.detach().requires_grad_(True)
        with torch.enable_grad() if analytic else contextlib.nullcontext():
            raw, feat = self._raw(self._normalise(points))
            sigma = self._activate(raw, points)
        out = {"sigma": sigma}
        normal = None
        if analytic:
            grad = torch.autograd.grad(sigma.sum(), points, create_graph=torch.is_grad_enabled() and self.training)[0]
            normal = -torch.nn.functional.normalize(grad, dim=-1)
        elif cfg.normals == "finite_difference":
            eps = cfg.finite_difference_eps
            offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps            # [3, 3]
            probe = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # [N, 6, 3]
            sig = self.density(probe.reshape(-1, 3)).reshape(-1, 6)
            grad = (sig[:, :3] - sig[:, 3:]) / (2 * eps)
            normal = -torch.nn.functional.normalize(grad, dim=-1)
        albedo = self._albedo(feat)
        if normal is not None:
            out["normal"] = normal
            if cfg.shading == "diffuse":
                lambert = (normal * self.light).sum(-1, keepdim=True).clamp_min(0.0)
                albedo = albedo * (cfg.ambient + (1 - cfg.ambient) * lambert)
        out["rgb"] = albedo
        return out

    # -- the interface ------------------------------------------------------------------------------------------
    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               chunk_cameras: int = 8, **_: Any) -> RenderOutput:
        """cameras [B] → RenderOutput: rgb [B,H,W,3] = premultiplied colour + (1 − alpha)·background [B,3],
        alpha [B,H,W,1], depth [B,H,W,1] (expected camera-z depth, 0 where empty), normal [B,H,W,3] (world,
        accumulated) when normals are on; extras: "orient" [B,H,W] per-pixel orientation term, "num_samples"."""
        B, H, W = len(cameras), cameras.height, cameras.width
        outs = []
        stratified = self.training and torch.is_grad_enabled()
        if self.dynamic and not getattr(self, "time_planes_fixed", False):  # 4D: each time its own field
            times, indices = cameras.time_groups()
            groups = [(idx, float(tau)) for idx, tau in zip(indices, times)]
        else:
            groups = [(torch.arange(B, device=cameras.c2w.device), None)]
        order = []
        for idx, tau in groups:
            if tau is not None:
                self._tau = tau
            for start in range(0, len(idx), chunk_cameras):
                part = idx[start:start + chunk_cameras]
                cams = cameras[part]
                rays = generate_rays(cams)
                res = render_field(rays, self.aabb, self.density, self.field, n_samples=self.cfg.num_samples,
                                   occupancy=self.occupancy, stratified=stratified,
                                   early_stop_eps=self.cfg.early_stop_eps, generator=self.sample_generator)
                res["depth"] = res["depth"] * rays.z_scale[:, None]
                outs.append(res)
                order.append(part)
        perm = torch.argsort(torch.cat(order).to(torch.long))

        def gather(key: str, channels: int) -> torch.Tensor:
            return torch.cat([o[key].reshape(-1, H * W, channels) for o in outs])[perm].reshape(B, H, W, channels)

        rgb = gather("rgb", 3)
        alpha = gather("opacity", 1)
        depth = gather("depth", 1)
        if background is not None:
            rgb = rgb + (1 - alpha) * background.to(rgb)[:, None, None, :]
        normal = None
        extras: dict[str, Any] = {"num_samples": sum(o["num_samples"] for o in outs)}
        if "normal" in outs[0]:
            normal = gather("normal", 3)
            extras["orient"] = gather("orient", 1)[..., 0]
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=normal, extras=extras)

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        """loss_orient: DreamFusion's orientation loss (mean over pixels of Σ_i stop_grad(w_i)·max(0, n_i·d)²;
        present only with normals); loss_sparsity: mean √(alpha² + 0.01) (threestudio's sparsity on opacity);
        loss_opaque: mean binary entropy of alpha (pushes opacity to 0 or 1)."""
        losses = alpha_regularizers(out.alpha)
        if "orient" in out.extras:
            losses["loss_orient"] = out.extras["orient"].mean()
        return losses

    def post_step(self, step: int, out: RenderOutput, optimizer: Optional[torch.optim.Optimizer],
                  cameras: Cameras, generator: Optional[torch.Generator] = None) -> dict:
        """Refresh the occupancy grid every ``occ_update_every`` steps (step size = the box diagonal / samples)."""
        cfg = self.cfg
        info: dict = {"num_samples": float(out.extras.get("num_samples", 0))}
        if self.occupancy is None or cfg.occ_update_every <= 0 or step % cfg.occ_update_every:
            return info
        step_size = float((self.aabb[3:] - self.aabb[:3]).norm()) / cfg.num_samples
        gen = generator if generator is not None and generator.device == self.aabb.device else None
        density = self.density
        if self.dynamic:  # a cell is occupied when it is at any of five times
            def density(points: torch.Tensor) -> torch.Tensor:
                out = None
                for tau in (0.0, 0.25, 0.5, 0.75, 1.0):
                    self._tau = tau
                    sigma = self.density(points)
                    out = sigma if out is None else torch.maximum(out, sigma)
                return out
        info.update(self.occupancy.update(density, step_size, cfg.occ_threshold, cfg.occ_decay, gen))
        return info

    # the occupancy grid's buffers are in the state_dict; the sampling generator travels here
    def extra_state_dict(self) -> dict:
        return {"sample_generator": self.sample_generator.get_state()}

    def load_extra_state_dict(self, state: dict) -> None:
        if state.get("sample_generator") is not None:
            self.sample_generator.set_state(state["sample_generator"])


class NeRFModel(VolumeModel):
    """Hash-grid NeRF (see the module docstring). Parameter groups: "nerf.encoding", "nerf.network"."""

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.cfg = cfg
        if cfg.backend not in ("auto", "torch"):
            raise ConfigError(f"representation.backend={cfg.backend!r} — use auto or torch")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._init_volume(cfg)
        self.encoding = hash_grid_from_config(cfg, generator)
        self._init_decoder(self.encoding.output_dim, generator)
        self._init_time_field(self.encoding.output_dim, generator)

    def features(self, points01: torch.Tensor) -> torch.Tensor:
        return self.encoding(points01)

    def parameter_groups(self) -> list[dict]:
        cfg = self.cfg
        return [
            {"name": "nerf.encoding", "params": list(self.encoding.parameters()), "lr_schedule": cfg.lr_encoding,
             "lr_key": "representation.lr_encoding", "eps": 1e-15},
            self._network_group("nerf", eps=1e-15),
        ] + self._time_groups()
