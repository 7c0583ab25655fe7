"""Surface representations rendered by rasterization: an explicit triangle mesh (this module) and DMTet
(:mod:`.dmtet`), both with a neural PBR material field.

The shared part, :class:`SurfaceModel`:

* **material field**: a hash-grid encoding (Müller et al. 2022, :class:`~.encodings.HashGridEncoding`) of the world
  position and a small MLP → albedo (3), roughness (1), metallic (1) and optionally a normal perturbation (3),
  each through a sigmoid (tanh for the perturbation). It is a *texture field* evaluated only at the visible
  surface points of each render (as Magic3D's fine stage and threestudio's mesh materials do), so its cost scales
  with the image, not with the mesh.
* **render**: :func:`dreamkit.render.raster.rasterize_mesh` finds the visible face and barycentrics per pixel; the
  surface point, the interpolated (smooth) or face (flat) normal and the material are gathered at the M visible
  pixels only; :func:`dreamkit.render.material.shade` shades them in the mode drawn for the batch (albedo,
  textureless, shaded: DreamFusion's random shading) — evaluation renders use albedo.
* **regularisers** on the current mesh: normal consistency (mean 1 − cos between the normals of faces sharing an
  edge) and Laplacian smoothing (uniform or cotangent weights), as in Magic3D / nvdiffrec / DreamGaussian.
* **export**: ``export_mesh`` (the mesh itself, no marching cubes) and ``query_color`` / ``query_orm`` for texture
  baking, the protocol of :func:`dreamkit.export.extract.mesh_from_representation`.
* **init_from**: :meth:`SurfaceModel.initialize_from_run` takes a finished run folder (NeRF, triplane, Gaussians,
  DMTet, mesh), extracts its mesh through :func:`~dreamkit.export.extract.mesh_from_representation` (DMTet: its
  SDF from the source's density), and fits the material field to the source's colours at surface points by a few
  hundred steps of regression — the coarse-to-fine hand-over of Magic3D (NeRF → DMTet) and DreamGaussian
  (Gaussians → mesh).

:class:`MeshModel` (``representation.name=mesh``): vertex positions = a fixed base + trainable offsets, fixed faces.
The base starts as an icosphere, or as the mesh extracted from ``init_from``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import Cameras
from ..config import sched
from ..errors import ConfigError, DreamkitError
from ..render import raster
from ..render.material import (MaterialConfig, check_material_config, environment_sh, perturb_normal,
                               sample_light_positions, sample_shading_mode, shade)
from ..types import RenderOutput
from .encodings import HashGridConfig, hash_grid_from_config

__all__ = [
    "SurfaceConfig", "MeshConfig", "SurfaceModel", "MeshModel", "MaterialField",
    "vertex_normals_torch", "face_adjacency", "normal_consistency", "unique_edges", "laplacian_vectors",
    "laplacian_loss", "load_source_run",
]


# ------------------------------------------------------------------------------------------------------------------
# mesh geometry helpers (differentiable, vectorised)


def vertex_normals_torch(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V, 3] area-weighted unit vertex normals (the sum of the un-normalised face normals around each vertex)."""
    v = verts[faces]
    fn = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)  # length = 2·area
    acc = torch.zeros_like(verts).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(acc, dim=-1, eps=1e-12)


def face_adjacency(faces: torch.Tensor) -> torch.Tensor:
    """[P, 2] pairs of faces that share an edge (an edge shared by k faces gives its k − 1 consecutive pairs)."""
    if faces.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=faces.device)
    e = faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    lo, hi = e.min(1).values, e.max(1).values
    key = lo * (int(faces.max()) + 1) + hi
    key_sorted, order = torch.sort(key)
    same = key_sorted[1:] == key_sorted[:-1]
    return torch.stack([order[:-1][same] // 3, order[1:][same] // 3], 1)


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor, pairs: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
    """Mean over pairs of adjacent faces of 1 − cos(n_a, n_b) (0 for a flat surface, 1 for a right-angle fold)."""
    if pairs is None:
        pairs = face_adjacency(faces)
    if pairs.shape[0] == 0:
        return verts.sum() * 0.0
    n = raster.face_normals(verts, faces)
    return (1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()


def unique_edges(faces: torch.Tensor) -> torch.Tensor:
    """[E, 2] undirected edges (smaller index first) of a triangle mesh."""
    e = faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2)
    return torch.unique(torch.sort(e, dim=1).values, dim=0)


def laplacian_vectors(verts: torch.Tensor, faces: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    """Per-vertex Laplacian δ_i = v_i − Σ_j w_ij v_j / Σ_j w_ij over the one-ring [V, 3] (0 for isolated vertices).

    ``uniform``: w_ij = 1 (the umbrella operator). ``cotangent``: w_ij = ½(cot α_ij + cot β_ij), the angles
    opposite edge ij (Meyer et al. 2003, "Discrete Differential-Geometry Operators"); the weights are computed
    without gradients (as in common mesh-smoothing losses), so the gradient only moves v towards the weighted mean.
    """
    V = verts.shape[0]
    if kind == "uniform":
        e = unique_edges(faces)
        i = torch.cat([e[:, 0], e[:, 1]])
        j = torch.cat([e[:, 1], e[:, 0]])
        w = torch.ones(i.shape[0], dtype=verts.dtype, device=verts.device)
    elif kind == "cotangent":
        with torch.no_grad():
            v = verts[faces]  # [F, 3 corners, 3]
            cots = []
            for c in range(3):  # corner c is opposite the edge (c+1, c+2)
                a = v[:, (c + 1) % 3] - v[:, c]
                b = v[:, (c + 2) % 3] - v[:, c]
                cots.append((a * b).sum(-1) / torch.linalg.cross(a, b, dim=-1).norm(dim=-1).clamp_min(1e-12))
            cot = torch.stack(cots, 1)  # [F, 3]
        opp_i = faces[:, [1, 2, 0]].reshape(-1)
        opp_j = faces[:, [2, 0, 1]].reshape(-1)
        half = 0.5 * cot.reshape(-1)
        i = torch.cat([opp_i, opp_j])
        j = torch.cat([opp_j, opp_i])
        w = torch.cat([half, half])
    else:
        raise ConfigError(f"representation.laplacian={kind!r} — use uniform or cotangent")
    wsum = torch.zeros(V, dtype=verts.dtype, device=verts.device).index_add(0, i, w)
    nb = torch.zeros_like(verts).index_add(0, i, w[:, None] * verts[j])
    has = wsum.abs() > 1e-12
    mean = torch.where(has[:, None], nb / torch.where(has, wsum, torch.ones_like(wsum))[:, None], verts)
    return verts - mean


def laplacian_loss(verts: torch.Tensor, faces: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    """Mean over vertices of ‖δ_i‖² (see :func:`laplacian_vectors`)."""
    if faces.shape[0] == 0:
        return verts.sum() * 0.0
    return (laplacian_vectors(verts, faces, kind) ** 2).sum(-1).mean()


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 3] uniformly distributed over the surface (faces drawn by area, uniform barycentrics)."""
    v = verts[faces]
    area = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1)
    fid = torch.multinomial(area.clamp_min(1e-20).double(), n, replacement=True, generator=generator)
    r1, r2 = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    s = r1.sqrt()
    bary = torch.stack([1 - s, s * (1 - r2), s * r2], 1).to(verts)
    return (bary[:, :, None] * v[fid]).sum(1)


# ------------------------------------------------------------------------------------------------------------------
# configs


@dataclass
class SurfaceConfig(HashGridConfig):
    """Fields shared by the rasterized surface representations (mesh, dmtet); the material field is a hash grid
    (fields of :class:`HashGridConfig`) + MLP."""

    #: half-size of the cube [-r, r]³ of the material field
    radius: float = 0.6
    hidden_dim: int = 32
    layers: int = 1
    lr_network: Any = sched(1e-3)
    #: shading: materials, lights, random shading modes (see dreamkit.render.material)
    material: MaterialConfig = field(default_factory=MaterialConfig)
    #: shading normals: smooth (interpolated vertex normals) | flat (face normals)
    normals: str = "smooth"
    #: render at ssaa× the resolution and average-pool (antialiased edges, as the oracle's targets)
    ssaa: int = 1
    #: nvdiffrast-style analytic antialiasing (silhouette gradients) when dreamkit.render.raster.antialias exists
    antialias: bool = False
    #: regulariser settings: uniform | cotangent Laplacian
    laplacian: str = "uniform"
    #: seed of the generator of shading modes and light positions (its state is checkpointed)
    shading_seed: int = 0
    #: init_from: decimate the extracted mesh to this many faces; colour regression steps, points and lr
    init_faces: int = 20000
    init_color_steps: int = 300
    init_color_points: int = 32768
    init_color_lr: float = 0.01


@dataclass
class MeshConfig(SurfaceConfig):
    name: str = "mesh"
    #: the starting mesh without init_from: an icosphere of this radius and subdivision level
    init_radius: float = 0.5
    init_subdivisions: int = 4
    #: learning rate (number or schedule) of the vertex offsets
    lr_verts: Any = sched(1e-4)


# ------------------------------------------------------------------------------------------------------------------
# material field


class MaterialField(nn.Module):
    """points [N, 3] (world) → {"albedo" [N, 3], "roughness" [N, 1], "metallic" [N, 1], "normal_offset" [N, 3]
    (only with a normal perturbation)}. Roughness and metallic start near the configured initial values."""

    def __init__(self, cfg: SurfaceConfig, generator: torch.Generator):
        super().__init__()
        self.radius = float(cfg.radius)
        self.encoding = hash_grid_from_config(cfg, generator)
        self.perturb = float(cfg.material.normal_perturbation) > 0
        out = 5 + (3 if self.perturb else 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            layers: list[nn.Module] = []
            d = self.encoding.output_dim
            for _ in range(int(cfg.layers)):
                layers += [nn.Linear(d, cfg.hidden_dim), nn.ReLU(inplace=True)]
                d = cfg.hidden_dim
            layers.append(nn.Linear(d, out))
            self.net = nn.Sequential(*layers)
        r0 = min(max(float(cfg.material.init_roughness), 0.01), 0.99)
        m0 = min(max(float(cfg.material.init_metallic), 0.01), 0.99)
        self.register_buffer("bias", torch.tensor([0.0, 0.0, 0.0, math.log(r0 / (1 - r0)), math.log(m0 / (1 - m0))]
                                                  + [0.0] * (out - 5)), persistent=False)

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((points / self.radius + 1) / 2).clamp(0.0, 1.0)
        h = self.net(self.encoding(x)) + self.bias
        out = {"albedo": torch.sigmoid(h[:, :3]), "roughness": torch.sigmoid(h[:, 3:4]),
               "metallic": torch.sigmoid(h[:, 4:5])}
        if self.perturb:
            out["normal_offset"] = torch.tanh(h[:, 5:8])
        return out


# ------------------------------------------------------------------------------------------------------------------
# init_from: a finished run folder


def load_source_run(run_dir: Any) -> tuple[Any, nn.Module]:
    """(resolved config, representation on the CPU) of a *finished* run folder; ConfigError (one line) otherwise."""
    from ..run import load_run
    from ..components import load_representation_from_checkpoint

    try:
        path, cfg, ckpt = load_run(run_dir)
    except DreamkitError as err:
        raise ConfigError(f"init_from={run_dir}: {err}") from None
    if not ckpt.is_file():
        raise ConfigError(f"init_from={path}: no checkpoint at {ckpt} — it is not a finished run")
    from ..checkpoint import CheckpointError, checkpoint_global_step

    try:
        step = checkpoint_global_step(ckpt)
    except CheckpointError as err:
        raise ConfigError(f"init_from={path}: {err}") from None
    total = int(cfg.trainer.max_steps)
    if step < total:
        raise ConfigError(f"init_from={path}: the run stopped at step {max(step, 0)} of {total} — finish it first "
                          f"(dreamkit fit resume={path})")
    try:
        model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    except DreamkitError:
        raise
    except Exception as err:  # an unreadable or foreign checkpoint
        raise ConfigError(f"init_from={path}: cannot load its representation ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return cfg, model


# ------------------------------------------------------------------------------------------------------------------
# the shared surface model


class SurfaceModel(nn.Module):
    """Base of rasterized surface representations; subclasses implement ``surface() -> (verts [V,3], faces
    [F,3])`` (differentiable vertices), ``parameter_groups`` and ``_init_geometry_from(model, cfg)``."""

    loss_names: tuple[str, ...] = ("normal_consistency", "laplacian")

    def _init_surface(self, cfg: SurfaceConfig, generator: Optional[torch.Generator]) -> torch.Generator:
        if cfg.normals not in ("smooth", "flat"):
            raise ConfigError(f"representation.normals={cfg.normals!r} — use smooth or flat")
        if cfg.laplacian not in ("uniform", "cotangent"):
            raise ConfigError(f"representation.laplacian={cfg.laplacian!r} — use uniform or cotangent")
        if int(cfg.ssaa) < 1:
            raise ConfigError(f"representation.ssaa must be ≥ 1, got {cfg.ssaa}")
        check_material_config(cfg.material)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.field = MaterialField(cfg, generator)
        self.register_buffer("env_sh", environment_sh(cfg.material), persistent=False)
        self.shading_generator = torch.Generator().manual_seed(int(cfg.shading_seed))
        self.last_mode = "albedo"
        return generator

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _field_groups(self, prefix: str) -> list[dict]:
        cfg = self.cfg
        return [
            {"name": f"{prefix}.encoding", "params": list(self.field.encoding.parameters()),
             "lr_schedule": cfg.lr_encoding, "lr_key": "representation.lr_encoding", "eps": 1e-15},
            {"name": f"{prefix}.network", "params": list(self.field.net.parameters()),
             "lr_schedule": cfg.lr_network, "lr_key": "representation.lr_network", "eps": 1e-15},
        ]

    # -- rendering ----------------------------------------------------------------------------------------------
    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               mode: Optional[str] = None, **_: Any) -> RenderOutput:
        """cameras [B] → RenderOutput: rgb [B,H,W,3] (shaded surface over ``background`` [B, 3]), alpha [B,H,W,1]
        (coverage), depth [B,H,W,1] (camera z, 0 where empty), normal [B,H,W,3] (world, facing the camera);
        extras: "verts", "faces" (the rendered mesh, for the regularisers), "shading" (the mode used).

        ``mode`` forces a shading mode; otherwise training renders (module in training mode, gradients on) draw it
        from ``material.mode_probs`` and evaluation renders use albedo."""
        cfg = self.cfg
        verts, faces = self.surface()
        B, H, W = len(cameras), cameras.height, cameras.width
        s = int(cfg.ssaa)
        cams = cameras.with_resolution(W * s, H * s) if s > 1 else cameras
        Hs, Ws = cams.height, cams.width
        device, dtype = verts.device, verts.dtype
        training = self.training and torch.is_grad_enabled()
        if mode is None:
            mode = sample_shading_mode(cfg.material.mode_probs, self.shading_generator) if training else "albedo"
        self.last_mode = mode

        n_pix = B * Hs * Ws
        bg = background.to(device, dtype) if background is not None else torch.zeros(B, 3, device=device,
                                                                                     dtype=dtype)
        rgb = bg[:, None, :].expand(B, Hs * Ws, 3).reshape(n_pix, 3)
        normal_img = torch.zeros(n_pix, 3, device=device, dtype=dtype)
        if faces.shape[0] > 0:
            frags = raster.rasterize_mesh(verts, faces, cams.viewmats, cams.K, Ws, Hs)
            visible = frags.visible
            fid = frags.face_id.view(-1)[visible]
            corner = faces[fid]  # [M, 3]
            bary = frags.visible_bary.to(dtype)
            points = (bary[..., None] * verts[corner]).sum(1)  # [M, 3]
            if cfg.normals == "smooth":
                vn = vertex_normals_torch(verts, faces)
                n = F.normalize((bary[..., None] * vn[corner]).sum(1), dim=-1, eps=1e-12)
            else:
                n = raster.face_normals(verts, faces)[fid]
            cam_pos = cams.positions.to(dtype)[torch.div(visible, Hs * Ws, rounding_mode="floor")]  # [M, 3]
            # two-sided: a normal seen from behind is flipped to face the camera
            n = torch.where(((cam_pos - points) * n).sum(-1, keepdim=True) < 0, -n, n)
            mat = self.field(points)
            if "normal_offset" in mat:
                n = perturb_normal(n, mat["normal_offset"] * float(cfg.material.normal_perturbation))
            light = None
            if mode != "albedo" and cfg.material.lighting == "point":
                light_cam = sample_light_positions(cams.positions, self.shading_generator,
                                                   cfg.material.light_jitter, list(cfg.material.light_distance_range))
                light = light_cam[torch.div(visible, Hs * Ws, rounding_mode="floor")]
            color = shade(mode, cfg.material, mat["albedo"], mat["roughness"], mat["metallic"], n, points, cam_pos,
                          light_pos=light, env_sh=self.env_sh)
            rgb = rgb.index_put((visible,), color.to(dtype))
            normal_img = normal_img.index_put((visible,), n)
            alpha = frags.mask.to(dtype).view(B, Hs, Ws, 1)
            depth = frags.depth.to(dtype).view(B, Hs, Ws, 1)
        else:  # nothing to rasterize: keep the parameters in the graph so a backward pass still works
            anchor = sum(p.reshape(-1)[:1].sum() for p in self.parameters() if p.requires_grad) * 0.0
            rgb = rgb + anchor
            alpha = torch.zeros(B, Hs, Ws, 1, device=device, dtype=dtype)
            depth = torch.zeros(B, Hs, Ws, 1, device=device, dtype=dtype)
        rgb = rgb.view(B, Hs, Ws, 3)
        normal_img = normal_img.view(B, Hs, Ws, 3)
        if cfg.antialias and faces.shape[0] > 0:
            # silhouette gradients (nvdiffrast's antialias, Laine et al. 2020) on colour and coverage together
            rgba = raster.antialias(torch.cat([rgb, alpha], -1), frags, verts, cams.viewmats, cams.K,
                                    topology=self._topology(verts, faces))
            rgb, alpha = rgba[..., :3], rgba[..., 3:]
        if s > 1:
            def pool(x):
                return F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)

            rgb, normal_img = pool(rgb), pool(normal_img)
            alpha_sum = pool(alpha)
            depth = torch.where(alpha_sum > 0, pool(depth) / alpha_sum.clamp_min(1e-12), torch.zeros_like(alpha_sum))
            alpha = alpha_sum
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=normal_img,
                            extras={"verts": verts, "faces": faces, "shading": mode,
                                    "num_faces": int(faces.shape[0])})

    def _check_antialias(self) -> None:
        if self.cfg.antialias and not hasattr(raster, "antialias"):
            raise ConfigError("representation.antialias=true needs dreamkit.render.raster.antialias, which this "
                              "version does not have — set representation.antialias=false")

    def _topology(self, verts: torch.Tensor, faces: torch.Tensor):
        """Edge adjacency for antialias (recomputed per render; MeshModel caches it for its fixed faces)."""
        return raster.mesh_topology(faces, verts)

    # -- regularisers -------------------------------------------------------------------------------------------
    def _adjacency(self, faces: torch.Tensor) -> torch.Tensor:
        return face_adjacency(faces)

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        """loss_normal_consistency (mean 1 − cos of adjacent face normals) and loss_laplacian (mean ‖δ‖² of the
        uniform or cotangent Laplacian) of the rendered mesh."""
        verts, faces = out.extras["verts"], out.extras["faces"]
        return {"loss_normal_consistency": normal_consistency(verts, faces, self._adjacency(faces)),
                "loss_laplacian": laplacian_loss(verts, faces, self.cfg.laplacian)}

    def post_step(self, step: int, out: RenderOutput, optimizer: Optional[torch.optim.Optimizer],
                  cameras: Cameras, generator: Optional[torch.Generator] = None) -> dict:
        return {"num_faces": float(out.extras.get("num_faces", 0))}

    def extra_state_dict(self) -> dict:
        return {"shading_generator": self.shading_generator.get_state()}

    def load_extra_state_dict(self, state: dict) -> None:
        if state.get("shading_generator") is not None:
            self.shading_generator.set_state(state["shading_generator"])

    # -- the export protocol (dreamkit.export.extract.mesh_from_representation) ------------------------------
    @torch.no_grad()
    def query_material(self, points: torch.Tensor, chunk: int = 1 << 16) -> dict[str, torch.Tensor]:
        device = next(self.field.parameters()).device
        outs = [self.field(points[i:i + chunk].to(device).float()) for i in range(0, len(points), chunk)]
        if not outs:
            return {"albedo": torch.zeros(0, 3), "roughness": torch.zeros(0, 1), "metallic": torch.zeros(0, 1)}
        return {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}

    @property
    def colors_hold_lighting(self) -> bool:
        """True when no training render is shaded (``material.mode_probs`` gives the "shaded" mode probability 0):
        the albedo was then fitted to images as they are, lighting included. With shaded renders (DreamFusion's
        random shading) it is an albedo under the material's lights, for a lit PBR export."""
        return float(list(self.cfg.material.mode_probs)[2]) == 0.0

    @torch.no_grad()
    def query_color(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] → albedo [N, 3] in [0, 1] (base colour for texture baking)."""
        return self.query_material(points)["albedo"].clamp(0, 1)

    @torch.no_grad()
    def query_orm(self, points: torch.Tensor) -> torch.Tensor:
        """points [N, 3] → [N, 3] (occlusion 1, roughness, metallic): glTF's occlusion-roughness-metallic packing,
        ready for :func:`dreamkit.export.bake.bake_texture` as a colour function."""
        m = self.query_material(points)
        return torch.cat([torch.ones_like(m["roughness"]), m["roughness"], m["metallic"]], -1).clamp(0, 1)

    def mesh_bound(self) -> np.ndarray:
        r = float(self.cfg.radius)
        return np.array([[-r, -r, -r], [r, r, r]])

    @torch.no_grad()
    def export_mesh(self, export_cfg: Any = None):
        """The representation's own mesh as a :class:`dreamkit.export.mesh.Mesh` (no marching cubes): largest
        components (``export.mesh_components``), decimated to ``export.mesh_faces``, albedo vertex colours and the
        median roughness / metallic as material factors."""
        from ..export.extract import decimate, keep_largest_components
        from ..export.mesh import Mesh, vertex_normals

        verts, faces = self.surface()
        v = verts.detach().float().cpu().numpy()
        f = faces.detach().cpu().numpy().astype(np.int64)
        if len(f) == 0:
            raise ValueError("the surface is empty (no face) — nothing to export")
        keep = int(getattr(export_cfg, "mesh_components", 1)) if export_cfg is not None else 1
        v, f = keep_largest_components(v, f, keep)
        max_faces = int(getattr(export_cfg, "mesh_faces", 0)) if export_cfg is not None else 0
        v, f = decimate(v, f, max_faces)
        mat = self.query_material(torch.as_tensor(v))
        return Mesh(verts=v, faces=f, normals=vertex_normals(v, f), vertex_colors=mat["albedo"].clamp(0, 1).numpy(),
                    roughness=float(mat["roughness"].median()), metallic=float(mat["metallic"].median()))

    # -- init_from ------------------------------------------------------------------------------------------------
    def _init_geometry_from(self, model: nn.Module, cfg: Any) -> Optional[Callable]:
        """Set the geometry from a source representation; return its colour function (points → [N, 3])."""
        raise NotImplementedError

    def initialize_from_run(self, run_dir: Any, log: Callable[[str], None] = print) -> dict:
        """Initialise geometry and material from a finished run folder (see the module docstring). Returns a
        summary {"faces", "verts", "color_mse"}."""
        src_cfg, src = load_source_run(run_dir)
        color_fn = self._init_geometry_from(src, src_cfg)
        with torch.no_grad():
            verts, faces = self.surface()
        if faces.shape[0] == 0:
            raise ConfigError(f"init_from={run_dir}: the extracted surface is empty — check the source run's "
                              "export.mesh_threshold")
        mse = self.fit_material(verts.detach(), faces, color_fn, int(self.cfg.init_color_steps))
        log(f"init_from {run_dir}: {type(src).__name__} → {int(faces.shape[0])} faces, material fitted to its "
            f"colours in {int(self.cfg.init_color_steps)} steps (colour MSE {mse:.4f})")
        return {"faces": int(faces.shape[0]), "verts": int(verts.shape[0]), "color_mse": mse}

    def fit_material(self, verts: torch.Tensor, faces: torch.Tensor, color_fn: Callable, steps: int) -> float:
        """Regress the material field's albedo to ``color_fn`` at random surface points (roughness and metallic to
        their initial values); its own Adam, its own generator (no global randomness). Returns the final MSE."""
        cfg = self.cfg
        if steps <= 0:
            return float("nan")
        gen = torch.Generator().manual_seed(int(cfg.shading_seed) + 17)
        points = sample_surface(verts.float().cpu(), faces.cpu(), int(cfg.init_color_points), gen)
        with torch.no_grad():
            target = torch.cat([color_fn(points[i:i + 16384]).float().cpu()
                                for i in range(0, len(points), 16384)]).clamp(0, 1)
        rough0 = torch.sigmoid(self.field.bias[3]).item()
        metal0 = torch.sigmoid(self.field.bias[4]).item()
        device = next(self.field.parameters()).device
        points, target = points.to(device), target.to(device)
        opt = torch.optim.Adam(self.field.parameters(), lr=float(cfg.init_color_lr), eps=1e-15)
        batch = min(8192, len(points))
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randint(0, len(points), (batch,), generator=gen).to(device)
            out = self.field(points[idx])
            loss = F.mse_loss(out["albedo"], target[idx])
            reg = F.mse_loss(out["roughness"], torch.full_like(out["roughness"], rough0)) \
                + F.mse_loss(out["metallic"], torch.full_like(out["metallic"], metal0))
            opt.zero_grad(set_to_none=True)
            (loss + 0.1 * reg).backward()
            opt.step()
        return float(loss.detach())


def _vertex_color_fn(verts: np.ndarray, colors: np.ndarray) -> Callable:
    """Colour of the nearest vertex (a colour function for a mesh that only has vertex colours)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(verts)
    table = torch.as_tensor(colors, dtype=torch.float32)

    def fn(points: torch.Tensor) -> torch.Tensor:
        _, idx = tree.query(points.detach().float().cpu().numpy())
        return table[torch.as_tensor(idx, dtype=torch.long)]

    return fn


def icosphere(subdivisions: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=int(subdivisions), radius=float(radius))
    return np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64)


# ------------------------------------------------------------------------------------------------------------------
# the explicit mesh


class MeshModel(SurfaceModel):
    """Explicit triangle mesh (see the module docstring). Parameters: ``params.offsets`` [V, 3] (trained),
    ``params.base`` [V, 3] and ``params.faces`` [F, 3] (frozen; parameters only so that checkpoints of any mesh
    size reload through ``resize_to``). Optimizer groups: "mesh.offsets", "mesh.encoding", "mesh.network"."""

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.cfg = cfg
        self._init_surface(cfg, generator)
        self._check_antialias()
        verts, faces = icosphere(cfg.init_subdivisions, cfg.init_radius)
        self.params = nn.ParameterDict()
        self._set_mesh(torch.as_tensor(verts), torch.as_tensor(faces))

    def _set_mesh(self, verts: torch.Tensor, faces: torch.Tensor) -> None:
        device = self.field.bias.device
        self.params["base"] = nn.Parameter(verts.float().to(device), requires_grad=False)
        self.params["offsets"] = nn.Parameter(torch.zeros_like(verts, dtype=torch.float32, device=device))
        self.params["faces"] = nn.Parameter(faces.long().to(device), requires_grad=False)
        self._adj_cache = None
        self._topo_cache = None

    def resize_to(self, shapes: dict[str, torch.Size]) -> None:
        """Reallocate to checkpoint shapes (the mesh size comes from init_from)."""
        for name, shape in shapes.items():
            if name in self.params and self.params[name].shape != shape:
                old = self.params[name]
                self.params[name] = nn.Parameter(torch.zeros(shape, dtype=old.dtype, device=old.device),
                                                 requires_grad=old.requires_grad)
        self._adj_cache = None
        self._topo_cache = None

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.params["base"] + self.params["offsets"], self.params["faces"]

    @property
    def num_faces(self) -> int:
        return int(self.params["faces"].shape[0])

    def _adjacency(self, faces: torch.Tensor) -> torch.Tensor:
        key = (faces.data_ptr(), tuple(faces.shape), faces.device)
        if self._adj_cache is None or self._adj_cache[0] != key:
            self._adj_cache = (key, face_adjacency(faces))
        return self._adj_cache[1]

    def _topology(self, verts: torch.Tensor, faces: torch.Tensor):
        key = (faces.data_ptr(), tuple(faces.shape), faces.device)
        cached = getattr(self, "_topo_cache", None)
        if cached is None or cached[0] != key:
            # connectivity only (faces are fixed): weld by index, not by position, so moving vertices stay valid
            self._topo_cache = (key, raster.mesh_topology(faces))
        return self._topo_cache[1]

    def parameter_groups(self) -> list[dict]:
        return [{"name": "mesh.offsets", "params": [self.params["offsets"]], "lr_schedule": self.cfg.lr_verts,
                 "lr_key": "representation.lr_verts", "eps": 1e-15}] + self._field_groups("mesh")

    def _init_geometry_from(self, model: nn.Module, cfg: Any) -> Optional[Callable]:
        from omegaconf import OmegaConf

        from ..export.extract import mesh_from_representation

        export_cfg = OmegaConf.create(OmegaConf.to_container(cfg.export, resolve=True)) if "export" in cfg else None
        if export_cfg is not None:
            export_cfg.mesh_faces = int(self.cfg.init_faces)
        try:
            mesh, color_fn = mesh_from_representation(model, export_cfg)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"init_from: cannot extract a mesh from the source run — {err}") from None
        self._set_mesh(torch.as_tensor(mesh.verts), torch.as_tensor(mesh.faces))
        if color_fn is None:
            colors = mesh.vertex_colors if mesh.vertex_colors is not None else np.full((mesh.num_verts, 3), 0.7)
            color_fn = _vertex_color_fn(mesh.verts, colors)
        return color_fn
