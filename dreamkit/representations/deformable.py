"""Deformable 3D Gaussians: canonical Gaussians plus a space-time deformation field (4D).

The field is a HexPlane / K-planes grid (Cao & Johnson 2023, "HexPlane"; Fridovich-Keil et al. 2023, "K-Planes"), as
4D Gaussian Splatting (Wu et al. 2024) and DreamGaussian4D use it: six feature planes over the pairs of (x, y, z, τ),
their features multiplied (K-planes' Hadamard product; the spatial planes start in U(0.1, 0.5), the time planes at 1,
so the features start independent of τ), at one or more spatial resolutions, then a small MLP with heads for
Δposition, Δrotation (added to the raw quaternion) and Δlog-scale. Opacity and colour are not deformed (4DGS's
``no_do``).

The canonical Gaussians are the scene at the canonical time τ_c exactly (``canonical_time``, 0 by default): the
deformation applied is D(x, τ) − D(x, τ_c), and the heads start at zero, so the field is the identity at
initialisation at every τ. A motion prior that places the object by time (the tiny video prior: "moving left" starts
on the right) wants τ_c = 0.5, the middle of the motion, where an image prior's centred object agrees with it; the
exports' mesh is then the scene at τ_c and its morph targets reach every keyframe from there. A render draws each
distinct time of its cameras once (a clip of F frames is F splats of the same Gaussians, moved).

Regularisers (each counts only with a weight ``loss.lambda_<name>``):
    deform_tv       total variation of every plane (K-planes' spatial smoothness)
    deform_smooth   squared second difference of the time planes along τ (K-planes' temporal smoothness)
    motion_kl       symmetric KL divergence between the normal fitted to the centres at this step's times and the
                    one at τ_c (Align Your Gaussians' regulariser of the moving Gaussians' distribution; the closed
                    form between diagonal normals is a dreamkit choice for the divergence): it is zero under a
                    rotation of an isotropic cloud about its centre and grows with drift, shrinking and explosion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from torch import nn

from ..cameras import Cameras
from ..config import sched
from ..errors import ConfigError
from ..types import RenderOutput
from .gaussians import GaussianConfig, GaussianModel

#: where render(translation=...) draws the object's translation
TRANSLATIONS = ("world", "viewer", "removed")

__all__ = ["DeformableGaussianConfig", "DeformableGaussianModel", "HexPlaneDeformation", "kplanes_product",
           "symmetric_kl_diag"]

#: the coordinate pairs of the six planes: (x, y), (x, z), (y, z) spatial; (x, τ), (y, τ), (z, τ) in time
PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


@dataclass
class DeformableGaussianConfig(GaussianConfig):
    name: str = "deformable_gaussians"
    #: spatial resolution of the planes at the coarsest level; each level of ``deform_multires`` multiplies it
    deform_resolution: int = 32
    #: resolution of the time axis (the same at every level)
    deform_time_resolution: int = 16
    deform_multires: List[int] = field(default_factory=lambda: [1, 2])
    deform_features: int = 16
    #: the field covers [−bound, bound]³ (positions beyond are clamped to its border)
    deform_bound: float = 1.6
    deform_width: int = 64
    #: which heads exist: Δposition is always there
    deform_rotation: bool = True
    deform_scale: bool = True
    lr_deform_grid: Any = sched(6.4e-3)
    lr_deform_mlp: Any = sched(6.4e-4)
    #: train only the deformation (the canonical Gaussians keep their values, e.g. from init_from a static run; no
    #: densification then)
    freeze_canonical: bool = False
    #: τ_c ∈ [0, 1]: the time at which the canonical Gaussians are the scene (the deformation is the identity there);
    #: a static stage renders at this time (camera.time_range), and exports extract their mesh there
    canonical_time: float = 0.0


class HexPlaneDeformation(nn.Module):
    """(x [N, 3], τ [T]) → Δposition [T, N, 3], Δquaternion [T, N, 4] (or None), Δlog-scale [T, N, 3] (or None)."""

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None):
        super().__init__()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.bound = float(cfg.deform_bound)
        c = int(cfg.deform_features)
        self.planes = nn.ParameterList()
        for level in cfg.deform_multires:
            res = int(cfg.deform_resolution) * int(level)
            sizes = (res, res, res, int(cfg.deform_time_resolution))
            for a, b in PLANES:
                shape = (1, c, sizes[b], sizes[a])  # grid_sample: u (coordinate a) along W, v (b) along H
                if b == 3:
                    plane = torch.ones(shape)
                else:
                    plane = 0.1 + 0.4 * torch.rand(shape, generator=generator)
                self.planes.append(nn.Parameter(plane))
        self.levels = len(cfg.deform_multires)
        width = int(cfg.deform_width)
        self.trunk = nn.Sequential(nn.Linear(c * self.levels, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        with torch.no_grad():
            for layer in self.trunk:
                if isinstance(layer, nn.Linear):
                    bound = 1 / math.sqrt(layer.in_features)
                    layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
        self.heads = nn.ModuleDict({"position": nn.Linear(width, 3)})
        if cfg.deform_rotation:
            self.heads["rotation"] = nn.Linear(width, 4)
        if cfg.deform_scale:
            self.heads["scale"] = nn.Linear(width, 3)
        for head in self.heads.values():  # zero heads: the identity at initialisation
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.planes)

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters()) + list(self.heads.parameters())

    def features(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """x [N, 3], τ [T] → [T, N, C·levels]: per level the product of the six planes' bilinear samples."""
        T, N = tau.shape[0], x.shape[0]
        xyz = (x / self.bound).clamp(-1, 1)
        coords = torch.cat([xyz[None].expand(T, N, 3), (tau * 2 - 1)[:, None, None].expand(T, N, 1)], -1)
        coords = coords.reshape(T * N, 4)
        k = len(PLANES)
        out = [kplanes_product(self.planes[level * k:(level + 1) * k], coords) for level in range(self.levels)]
        return torch.cat(out, -1).reshape(T, N, -1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.trunk(self.features(x, tau))
        return {name: head(hidden) for name, head in self.heads.items()}

    def plane_tv(self) -> torch.Tensor:
        """Mean squared difference between neighbouring cells of every plane (both axes)."""
        total = 0.0
        for plane in self.planes:
            total = total + (plane[..., 1:, :] - plane[..., :-1, :]).square().mean() \
                + (plane[..., :, 1:] - plane[..., :, :-1]).square().mean()
        return total / len(self.planes)

    def time_smoothness(self) -> torch.Tensor:
        """Mean squared second difference along τ (the H axis) of the time planes."""
        total, count = 0.0, 0
        for level in range(self.levels):
            for j, (_, b) in enumerate(PLANES):
                if b != 3:
                    continue
                plane = self.planes[level * len(PLANES) + j]
                if plane.shape[-2] < 3:
                    continue
                total = total + (plane[..., 2:, :] - 2 * plane[..., 1:-1, :] + plane[..., :-2, :]).square().mean()
                count += 1
        return total / max(count, 1)


def kplanes_product(planes, coords: torch.Tensor) -> torch.Tensor:
    """The six planes of :data:`PLANES` ([1, C, H, W] each) sampled bilinearly at coords [N, 4] (x, y, z, τ in
    [−1, 1]; plane (a, b) reads coordinate a along W, b along H) and multiplied: [N, C] (K-planes' Hadamard product)."""
    feat = None
    for (a, b), plane in zip(PLANES, planes):
        grid = torch.stack([coords[:, a], coords[:, b]], -1)[None, :, None]  # [1, N, 1, 2]
        sample = torch.nn.functional.grid_sample(plane, grid, mode="bilinear", padding_mode="border",
                                                 align_corners=True)[0, :, :, 0].T  # [N, C]
        feat = sample if feat is None else feat * sample
    return feat


def symmetric_kl_diag(mu1: torch.Tensor, var1: torch.Tensor, mu2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N1‖N2) + KL(N2‖N1) for diagonal normals: ½·Σ_d [v1/v2 + v2/v1 − 2 + (μ1 − μ2)²·(1/v1 + 1/v2)]."""
    return 0.5 * (var1 / var2 + var2 / var1 - 2 + (mu1 - mu2).square() * (1 / var1 + 1 / var2)).sum(-1)


class _CatGrad:
    """The per-camera projected means of a render split by time, seen by the densification strategy as one
    [B, N, 2] tensor whose ``.grad`` is gathered (in camera order) after the backward pass."""

    def __init__(self, parts: list[torch.Tensor], order: torch.Tensor):
        self.parts, self.order = parts, order

    @property
    def grad(self) -> Optional[torch.Tensor]:
        grads = [p.grad for p in self.parts]
        if any(g is None for g in grads):
            return None
        return torch.cat(grads)[self.order]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.order), *self.parts[0].shape[1:]))


class DeformableGaussianModel(GaussianModel):
    """Canonical 3D Gaussians (:class:`GaussianModel`'s parameters, densified as they are) moved by a
    :class:`HexPlaneDeformation` to each camera's time."""

    loss_names: tuple[str, ...] = GaussianModel.loss_names + ("deform_tv", "deform_smooth", "motion_kl")
    #: render(translation=...) can draw the object's translation in each camera's frame or without it
    renders_translation = True
    #: the renders depend on the cameras' time (exports write animations)
    dynamic = True

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None, layout: Optional[list] = None):
        if cfg.init == "layout":
            raise ConfigError("representation.name=deformable_gaussians does not take init=layout — use sphere, "
                              "points or mesh, or init_from a static run")
        for key in ("deform_resolution", "deform_time_resolution", "deform_features", "deform_width"):
            if int(cfg[key]) < 1:
                raise ConfigError(f"representation.{key}={cfg[key]} must be ≥ 1")
        if not cfg.deform_multires or any(int(m) < 1 for m in cfg.deform_multires):
            raise ConfigError(f"representation.deform_multires={list(cfg.deform_multires)} — give levels ≥ 1, "
                              "e.g. [1, 2]")
        if not float(cfg.deform_bound) > 0:
            raise ConfigError(f"representation.deform_bound={cfg.deform_bound} must be > 0")
        if not 0.0 <= float(cfg.canonical_time) <= 1.0:
            raise ConfigError(f"representation.canonical_time={cfg.canonical_time} — give a time in [0, 1] (0: the "
                              "start of the motion, 0.5: its middle)")
        super().__init__(cfg, generator, layout)
        self.deformation = HexPlaneDeformation(cfg, generator)
        if cfg.freeze_canonical:
            for name, p in self.params.items():
                p.requires_grad_(False)

    # -- the deformation --------------------------------------------------------------------------------------
    @property
    def canonical_time(self) -> float:
        """τ_c: the time at which the canonical Gaussians are the scene (``representation.canonical_time``)."""
        return float(self.cfg.canonical_time)

    def deltas(self, x: torch.Tensor, tau: torch.Tensor) -> dict[str, torch.Tensor]:
        """The deformation D(x, τ) − D(x, τ_c) at points x [N, 3] and times τ [T] ({head: [T, N, d]})."""
        tau = torch.as_tensor(tau, dtype=x.dtype, device=x.device).reshape(-1)
        both = self.deformation(x, torch.cat([tau, tau.new_full((1,), self.canonical_time)]))
        return {name: value[:-1] - value[-1:] for name, value in both.items()}

    def displacement(self, points: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """[T, N, 3]: how far points [N, 3] of the canonical (τ = τ_c) scene move at times τ [T] — the field that
        moves an exported mesh's vertices (the animated GLB's morph targets)."""
        return self.deltas(points, tau)["position"]

    def deformed(self, tau: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Gaussians at times τ [T]: means [T, N, 3], quats [T, N, 4], scales [T, N, 3]."""
        d = self.deltas(self.means, tau)
        T = d["position"].shape[0]
        means = self.means[None] + d["position"]
        quats = self.quats[None] + d["rotation"] if "rotation" in d else self.quats[None].expand(T, -1, -1)
        log_scales = self.params["log_scales"][None]
        log_scales = log_scales + d["scale"] if "scale" in d else log_scales.expand(T, -1, -1)
        return {"means": means, "quats": quats, "scales": torch.exp(log_scales)}

    @torch.no_grad()
    def at_time(self, tau: float) -> GaussianModel:
        """A static :class:`GaussianModel` holding the Gaussians at time τ (for exporters and the viewer)."""
        d = self.deformed(torch.tensor([float(tau)], device=self.means.device))
        params = {name: p.detach().clone() for name, p in self.params.items()}
        params["means"] = d["means"][0].clone()
        params["quats"] = d["quats"][0].clone()
        params["log_scales"] = torch.log(d["scales"][0])
        return GaussianModel.from_params(self.cfg, params, strategy=self.strategy)

    # -- the interface ----------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        groups = [] if self.cfg.freeze_canonical else super().parameter_groups()
        return groups + [
            {"name": "deform.grid", "params": self.deformation.grid_parameters(),
             "lr_schedule": self.cfg.lr_deform_grid, "lr_key": "representation.lr_deform_grid"},
            {"name": "deform.mlp", "params": self.deformation.mlp_parameters(),
             "lr_schedule": self.cfg.lr_deform_mlp, "lr_key": "representation.lr_deform_mlp"},
        ]

    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               **options: Any) -> RenderOutput:
        """Each distinct time of ``cameras`` is one splat of the Gaussians moved to it (see the module docstring);
        the outputs come back in camera order, with extras["means"] [T, N, 3] (the centres at the T times).

        ``translation`` says where the object's translation — the opacity-weighted mean displacement d̄(τ) of the
        Gaussians — is drawn (composed guidance's ``translation`` member key; a dreamkit choice for priors that know
        less than the world):

        * ``"world"`` (default): as it is;
        * ``"viewer"``: turned about +Y by each camera's azimuth (R_a), as the tiny world's clips are drawn
          (:func:`dreamkit.world.clips.render_clip`): every camera sees d̄ = (x, y, z) as x to its right, y up and z
          towards it — what a video prior without a camera input was trained on ("moving right" is always the
          viewer's right, at one depth); a camera at azimuth 0 sees the world's frame exactly;
        * ``"removed"``: taken away (the object held where it is at τ_c, its turns and scaling kept): what an image
          prior of centred, still objects can judge at any time — shape, size and colour, not where the motion has
          taken the object.
        """
        if options.get("part") is not None:
            raise ConfigError("deformable Gaussians have no layout parts (render(part=...))")
        times, groups = cameras.time_groups()
        moved = self.deformed(times)
        turns = [None] * len(groups)
        translation = options.get("translation", "world")
        if translation not in TRANSLATIONS:
            raise ConfigError(f"render(translation={translation!r}) — give one of {', '.join(TRANSLATIONS)}")
        if translation != "world":
            times, groups, moved, turns = self._moved_translation(cameras, times, groups, moved, translation)
        rgbs, alphas, depths, means2d, radii, order = [], [], [], [], [], []
        for i, idx in enumerate(groups):
            bg = background[idx] if background is not None and background.dim() == 2 else background
            means = moved["means"][i] if turns[i] is None else moved["means"][i] + turns[i]
            out = self._splat(cameras[idx], means, moved["quats"][i], moved["scales"][i], bg, step)
            rgbs.append(out.rgb)
            alphas.append(out.alpha)
            depths.append(out.depth)
            means2d.append(out.extras["means2d"])
            radii.append(out.extras["radii"])
            order.append(idx)
        perm = torch.argsort(torch.cat(order))

        def gather(parts: list) -> torch.Tensor:
            return torch.cat(parts)[perm]

        extras = {"means": moved["means"], "times": times,
                  "means2d": _CatGrad(means2d, perm) if means2d[0] is not None and means2d[0].requires_grad
                  else None,
                  "radii": gather(radii) if radii[0] is not None else None}
        return RenderOutput(rgb=gather(rgbs), alpha=gather(alphas), depth=gather(depths), extras=extras)

    def _moved_translation(self, cameras: Cameras, times: torch.Tensor, groups: list, moved: dict, translation: str):
        """Regroup the cameras by (time, azimuth) and give each group the shift [1, 3] that draws the object's
        translation d̄(τ) as ``translation`` asks (see :meth:`render`): (R_a − I)·d̄ for "viewer", −d̄ for "removed"."""
        from ..cameras import azimuth_rotation

        weights = self.opacities.reshape(-1).detach()
        weights = weights / weights.sum().clamp_min(1e-12)
        shift = torch.einsum("n,tnd->td", weights, moved["means"] - self.means[None])  # d̄(τ) [T, 3]
        if translation == "removed":
            return times, groups, moved, [-shift[i][None] for i in range(len(groups))]
        new_groups, index, turns = [], [], []
        for i, idx in enumerate(groups):  # each time's cameras, split by azimuth
            azimuths = cameras.azimuth[idx]
            for azimuth in torch.unique(azimuths):
                rot = azimuth_rotation(azimuth[None])[0].to(shift)
                new_groups.append(idx[azimuths == azimuth])
                index.append(i)
                turns.append((shift[i] @ rot.T - shift[i])[None])
        index_t = torch.tensor(index, device=times.device)
        return times[index_t], new_groups, {key: value[index_t] for key, value in moved.items()}, turns

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        terms = super().regularizers(out, step)
        terms["loss_deform_tv"] = self.deformation.plane_tv()
        terms["loss_deform_smooth"] = self.deformation.time_smoothness()
        means = out.extras.get("means") if out.extras else None
        if means is not None:
            canon = self.means
            mu0, var0 = canon.mean(0), canon.var(0) + 1e-6
            mu, var = means.mean(1), means.var(1) + 1e-6
            terms["loss_motion_kl"] = symmetric_kl_diag(mu, var, mu0[None], var0[None]).mean()
        return terms

    def post_step(self, step: int, out: RenderOutput, optimizer: Optional[torch.optim.Optimizer],
                  cameras: Cameras, generator: Optional[torch.Generator] = None) -> dict:
        if self.cfg.freeze_canonical:
            return {}
        return super().post_step(step, out, optimizer, cameras, generator)

    def initialize_from_run(self, run_dir) -> None:
        """``init_from=<run>``: the canonical Gaussians of a finished (static) Gaussians run; the deformation starts
        at the identity."""
        from ..components import load_representation_from_checkpoint
        from ..errors import DreamkitError
        from ..run import load_run
        from . import canonical_scene

        run_dir, cfg, ckpt = load_run(run_dir)
        if not ckpt.is_file():
            raise DreamkitError(f"init_from={run_dir}: it has no checkpoint yet ({ckpt})")
        source = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
        source = canonical_scene(source)  # a 4D run: its Gaussians at its canonical time
        if not isinstance(source, GaussianModel):
            raise DreamkitError(f"init_from={run_dir}: its representation ({cfg.representation.name}) is not "
                                "Gaussians — start deformable Gaussians from a gaussians or deformable_gaussians run")
        shapes = {name: p.shape for name, p in source.params.items() if name in self.params}
        if "shN" in source.params and "shN" not in self.params or "shN" in self.params and "shN" not in source.params:
            raise DreamkitError(f"init_from={run_dir}: its sh_degree={cfg.representation.sh_degree} differs from this "
                                f"recipe's representation.sh_degree={self.cfg.sh_degree} — use the same degree")
        self.resize_to(shapes)
        with torch.no_grad():
            for name, p in source.params.items():
                if name in self.params:
                    self.params[name].copy_(p.to(self.params[name]))
        print(f"canonical Gaussians from {run_dir} ({source.num_gaussians} Gaussians)", flush=True)
