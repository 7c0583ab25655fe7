"""Config dataclasses of the priors, and ``build_prior`` (kept free of heavy imports)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


@dataclass
class OraclePriorConfig:
    type: str = "oracle"
    #: target meshes: [{mesh: assets path or file, label: "a house", weight: 1}]; labels are the prompts the prior
    #: understands, weights the mixture proportions
    targets: List[Dict[str, Any]] = field(default_factory=lambda: [{"mesh": "meshes/house.ply", "label": "a house"}])
    resolution: int = 64
    #: background of the target renders in [0, 1] (use the same solid background for the representation)
    background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    #: supersampling of the target renders (smooth silhouettes)
    ssaa: int = 2


@dataclass
class StableDiffusionPriorConfig:
    type: str = "stable-diffusion"
    #: local diffusers folder or Hugging Face hub id
    name: str = "stabilityai/stable-diffusion-2-1-base"
    #: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16
    dtype: str = "auto"
    #: never reach the network (default: try the local cache, then the hub)
    local_files_only: Optional[bool] = None
    #: UNet and VAE weights and inputs in channels-last memory format (the same numbers to float rounding).
    #: auto = on the CPU (the VAE's encode + backward ran ~15% faster on the 2-core CPU, the UNet no slower), off on
    #: CUDA (on an H200 the SD 2.1 gs_sds step took 122 ms NHWC, 110 ms NCHW: GroupNorm has no NHWC kernel there)
    channels_last: Any = "auto"
    #: replay the UNet from CUDA graphs when no gradient is needed (priors/base.py CudaGraphCache): auto = on CUDA
    cuda_graph: Any = "auto"


@dataclass
class PixelPriorConfig:
    type: str = "pixel"
    #: a shipped prior (assets/priors/<name>) or a local diffusers folder with unet/, scheduler/, a text encoder
    name: str = "tiny-t2i"
    #: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16
    dtype: str = "auto"
    #: UNet weights and inputs in channels-last memory format (the same numbers to float rounding; tiny-t2i's UNet
    #: call ran 8–13% faster on the 2-core CPU). auto = on the CPU, off on CUDA (see StableDiffusionPriorConfig)
    channels_last: Any = "auto"
    #: replay the UNet from CUDA graphs when no gradient is needed (priors/base.py CudaGraphCache): auto = on CUDA
    cuda_graph: Any = "auto"


def build_prior(cfg: Any, device: torch.device):
    """Instantiate the prior a validated ``prior`` config section describes. A prior folder whose files cannot be
    read (bad JSON, truncated or foreign weights) is one DreamkitError naming the folder; programming errors
    (TypeError, AttributeError, NameError) still raise as they are."""
    from ..errors import DreamkitError

    try:
        return _build_prior(cfg, device)
    except (DreamkitError, TypeError, AttributeError, NameError, KeyboardInterrupt):
        raise
    except Exception as err:  # JSONDecodeError, OSError, safetensors' errors, diffusers' ValueErrors, ...
        first = " ".join(str(err).split())[:240] or type(err).__name__
        raise DreamkitError(f"cannot load the prior {getattr(cfg, 'name', cfg.type)!r} ({cfg.type}): "
                            f"{type(err).__name__}: {first} — its folder is damaged, incomplete or not a "
                            f"{cfg.type} prior; rebuild or download it again") from None


def _build_prior(cfg: Any, device: torch.device):
    from ..assets import asset_path

    if cfg.type == "oracle":
        from .oracle import OraclePrior

        targets = [dict(t, mesh=str(asset_path(t["mesh"]))) for t in cfg.targets]
        prior = OraclePrior(targets=targets, resolution=cfg.resolution, background=tuple(cfg.background),
                            ssaa=cfg.ssaa)
        return prior.to(device)
    if cfg.type == "stable-diffusion":
        from .diffusers_sd import StableDiffusionPrior

        return StableDiffusionPrior(cfg.name, device=str(device), dtype=cfg.dtype,
                                    local_files_only=cfg.local_files_only, channels_last=cfg.channels_last,
                                    cuda_graph=cfg.cuda_graph)
    if cfg.type == "pixel":
        from .pixel import PixelDiffusionPrior

        return PixelDiffusionPrior(cfg.name, device=str(device), dtype=cfg.dtype, channels_last=cfg.channels_last,
                                   cuda_graph=cfg.cuda_graph)
    raise ValueError(cfg.type)


def check_prior_config(cfg: Any) -> None:
    """Fail before any work when the prior's files are missing (folder of a checkpoint, target meshes)."""
    from pathlib import Path

    from ..errors import DreamkitError

    if cfg.type == "stable-diffusion":
        from .diffusers_sd import _looks_like_path

        name = str(cfg.name)
        looks_like_path = _looks_like_path(name)
        if looks_like_path and not Path(name).expanduser().is_dir():
            raise DreamkitError(f"prior folder not found: {name} — pass prior.name=<folder with model_index.json> "
                                "or a Hugging Face id such as stabilityai/stable-diffusion-2-1-base")
    elif cfg.type == "pixel":
        from .pixel import resolve_prior_folder

        resolve_prior_folder(str(cfg.name))
    elif cfg.type == "oracle":
        from ..assets import asset_path

        if not cfg.targets:
            raise DreamkitError("prior.targets is empty — the oracle needs at least one {mesh, label} target")
        for i, target in enumerate(cfg.targets):
            if "mesh" not in target or "label" not in target:
                raise DreamkitError(f"prior.targets[{i}] needs keys mesh and label, got {dict(target)}")
            asset_path(target["mesh"])
