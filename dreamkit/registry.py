"""Name → component. Entries are imported lazily so ``import dreamkit`` stays light (no diffusers, gsplat, CUDA).

Each entry is ``(module:attribute of the component, module:attribute of its config dataclass, one-line summary)``.
Later representations, priors and guidance plug in by adding a line here.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from .errors import ConfigError

REGISTRY: dict[str, dict[str, tuple[str, str, str]]] = {
    "representation": {
        "gaussians": ("dreamkit.representations.gaussians:GaussianModel",
                      "dreamkit.representations.gaussians:GaussianConfig",
                      "3D Gaussian splatting; gsplat on CUDA, tile-binned PyTorch twin on CPU; densify/prune strategy"),
        "deformable_gaussians": ("dreamkit.representations.deformable:DeformableGaussianModel",
                                 "dreamkit.representations.deformable:DeformableGaussianConfig",
                                 "4D: canonical 3D Gaussians + a HexPlane deformation field (Δposition, rotation, "
                                 "scale over time τ)"),
        "nerf": ("dreamkit.representations.nerf:NeRFModel", "dreamkit.representations.nerf:NeRFConfig",
                 "hash-grid NeRF, volume-rendered with an occupancy grid (nerfacc on CUDA, PyTorch twin on CPU)"),
        "triplane": ("dreamkit.representations.triplane:TriplaneModel",
                     "dreamkit.representations.triplane:TriplaneConfig",
                     "three axis-aligned feature planes + small MLP decoder (EG3D), volume-rendered"),
        "mesh": ("dreamkit.representations.mesh:MeshModel", "dreamkit.representations.mesh:MeshConfig",
                 "explicit triangle mesh (vertex offsets) + PBR material field, rasterized; init_from a run's mesh"),
        "dmtet": ("dreamkit.representations.dmtet:DMTetModel", "dreamkit.representations.dmtet:DMTetConfig",
                  "DMTet: SDF + deformation on a tet grid, marching tetrahedra, PBR material field, rasterized"),
        "image": ("dreamkit.representations.image:ImageModel", "dreamkit.representations.image:ImageConfig",
                  "one image (pixels, or latents of a latent prior) that ignores cameras: the 2D playground"),
    },
    "prior": {
        "oracle": ("dreamkit.priors.oracle:OraclePrior", "dreamkit.priors.configs:OraclePriorConfig",
                   "exact denoiser of the smoothed distribution of target-mesh renders (tests, ablations)"),
        "stable-diffusion": ("dreamkit.priors.diffusers_sd:StableDiffusionPrior",
                             "dreamkit.priors.configs:StableDiffusionPriorConfig",
                             "diffusers Stable Diffusion 1.x/2.x folder or hub id (latent; epsilon or v-prediction)"),
        "text-to-video": ("dreamkit.priors.diffusers_video:TextToVideoPrior",
                          "dreamkit.priors.configs:TextToVideoPriorConfig",
                          "diffusers text-to-video folder, ModelScope / zeroscope layout (UNet3DConditionModel): clips "
                          "of F frames"),
        "pixel": ("dreamkit.priors.pixel:PixelDiffusionPrior", "dreamkit.priors.configs:PixelPriorConfig",
                  "pixel-space diffusers folder, DeepFloyd-IF style (the embedded tiny priors: single-view, "
                  "multi-view or video)"),
    },
    "guidance": {
        "sds": ("dreamkit.guidance.sds:SDSGuidance", "dreamkit.guidance.sds:SDSConfig",
                "score distillation sampling (DreamFusion) with CFG, t annealing and weightings"),
        "asd": ("dreamkit.guidance.asd:ASDGuidance", "dreamkit.guidance.asd:ASDConfig",
                "asynchronous score distillation (ScaleDreamer): the prior at t + Δt in place of VSD's φ"),
        "vsd": ("dreamkit.guidance.vsd:VSDGuidance", "dreamkit.guidance.vsd:VSDConfig",
                "variational score distillation (ProlificDreamer): a LoRA copy of the prior with a camera input (φ)"),
        "ism": ("dreamkit.guidance.ism:ISMGuidance", "dreamkit.guidance.ism:ISMConfig",
                "interval score matching (LucidDreamer): DDIM-inverted x_t, target ε̂(x_s; ∅) one interval earlier"),
        "csd": ("dreamkit.guidance.csd:CSDGuidance", "dreamkit.guidance.csd:CSDConfig",
                "classifier score distillation: a·ε̂(y) + b·ε̂(y_neg) + c·ε̂(∅) + d·ε, scheduled (pure CSD: 1, 0, −1, 0)"),
        "nfsd": ("dreamkit.guidance.nfsd:NFSDGuidance", "dreamkit.guidance.nfsd:NFSDConfig",
                 "noise-free score distillation: δ_D (ε̂_∅, minus ε̂_neg above the switch) + s·(ε̂_c − ε̂_∅), no ε"),
        "bsd": ("dreamkit.guidance.bsd:BSDGuidance", "dreamkit.guidance.bsd:BSDConfig",
                "balanced score distillation (PlacidDreamer): min-norm mix of λ(ε̂_c − ε̂_u) and ε̂_u, w = sqrt(ᾱ_t)"),
        "bridge": ("dreamkit.guidance.bridge:BridgeGuidance", "dreamkit.guidance.bridge:BridgeConfig",
                   "SDS-Bridge: SDS toward prompt + target modifier, then ε̂(y_tgt) − ε̂(y_src) from a set step"),
        "composed": ("dreamkit.guidance.composed:ComposedGuidance", "dreamkit.guidance.composed:ComposedConfig",
                     "several members (each its prior, layout, loss) drawn per step by probability (4D-fy, Align "
                     "Your Gaussians)"),
        "semantic_sds": ("dreamkit.guidance.semantic:SemanticSDSGuidance",
                         "dreamkit.guidance.semantic:SemanticSDSConfig",
                         "compositional SDS (SemanticSDS; Set-the-Scene alternation): a prompt per layout box, masked"),
    },
    "strategy": {
        "adc": ("dreamkit.representations.gaussian_strategy:DensifyStrategy",
                "dreamkit.representations.gaussian_strategy:DensifyConfig",
                "3DGS adaptive density control: clone/split by view-space gradient, prune, opacity reset"),
    },
}

#: export formats: name → (module:function, summary)
EXPORTERS: dict[str, tuple[str, str]] = {
    "ply": ("dreamkit.export.ply:export_gaussians_ply", "3D Gaussian splatting PLY (x,y,z,f_dc,f_rest,opacity,scale,rot)"),
    "mp4": ("dreamkit.export.video:export_turntable", "turntable video of the representation (imageio-ffmpeg, H.264)"),
    "glb": ("dreamkit.export.gltf:export_glb", "textured mesh, binary glTF 2.0 with PBR material (game engines, Blender)"),
    "obj": ("dreamkit.export.obj:export_obj", "textured mesh, OBJ + MTL + PNG textures"),
    "png": ("dreamkit.representations.image:export_png", "the image representation (any other: one still render)"),
}
EXPORT_FORMATS = tuple(EXPORTERS)


def _load(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _entry(kind: str, name: Any, key: str) -> tuple[str, str, str]:
    table = REGISTRY[kind]
    if name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.4)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"{key}={name!r} is not a registered {kind} — {hint}available: {', '.join(table)}")
    return table[name]


def component_class(kind: str, name: str, key: str = "name") -> Any:
    return _load(_entry(kind, name, key)[0])


def component_config_class(kind: str, name: Any, key: str = "name") -> type:
    return _load(_entry(kind, name, key)[1])


def exporter(fmt: str) -> Any:
    if fmt not in EXPORTERS:
        close = difflib.get_close_matches(fmt, list(EXPORTERS), n=3, cutoff=0.3)
        raise ConfigError(f"unknown export format {fmt!r} — available: {', '.join(EXPORTERS)}"
                          + (f" (did you mean {close[0]}?)" if close else ""))
    return _load(EXPORTERS[fmt][0])
