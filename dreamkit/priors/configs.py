"""Config dataclasses of the priors, and ``build_prior`` (kept free of heavy imports)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


@dataclass
class OraclePriorConfig:
    type: str = "oracle"
    #: target meshes: [{mesh: assets path or file, label: "a house", weight: 1, motion: still}]; labels are the
    #: prompts the prior understands, weights the mixture proportions; ``motion`` (one of the tiny world's motions,
    #: dreamkit.world.motion: bouncing, spinning, moving left, ...) animates the target over the cameras' time τ —
    #: the exact denoiser of an animated target (the 4D oracle)
    targets: List[Dict[str, Any]] = field(default_factory=lambda: [{"mesh": "meshes/house.ply", "label": "a house"}])
    resolution: int = 64
    #: background of the target renders in [0, 1] (use the same solid background for the representation)
    background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    #: supersampling of the target renders (smooth silhouettes)
    ssaa: int = 2
    #: frames per clip F: with F > 1 the prior denoises clips of F consecutive cameras jointly (the posterior over
    #: targets is the clip's, as a video prior's; camera.frames must match). 1 = an image prior (any time per image)
    frames: int = 1


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
class TextToVideoPriorConfig:
    type: str = "text-to-video"
    #: a ModelScope / zeroscope-layout diffusers folder (unet/ with a UNet3DConditionModel, vae/, text_encoder/,
    #: tokenizer/, scheduler/) or a Hugging Face hub id
    name: str = "ali-vilab/text-to-video-ms-1.7b"
    #: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16
    dtype: str = "auto"
    #: never reach the network (default: try the local cache, then the hub)
    local_files_only: Optional[bool] = None
    #: frames per clip F (camera.frames must match); 0 = the folder's model_index.json "frames" (a published
    #: ModelScope / zeroscope folder has none: set it to the frames it was trained on, 16 or 24)
    frames: int = 0
    #: replay the UNet from CUDA graphs when no gradient is needed (priors/base.py CudaGraphCache): auto = on CUDA
    cuda_graph: Any = "auto"


@dataclass
class PixelPriorConfig:
    type: str = "pixel"
    #: a shipped prior (assets/priors/<name>) or a local diffusers folder with unet/, scheduler/, a text encoder
    name: str = "tiny-t2i"
    #: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16
    dtype: str = "auto"
    #: [lo, hi] ⊆ [0, 1], video priors only: the prior is shown each frame's time τ as lo + τ·(hi − lo). For a prior
    #: whose time condition is periodic (time_input "harmonics": sin/cos(2πkτ), tiny-video up to run j), which cannot
    #: tell τ = 0 from τ = 1 and draws the object at the motion's other end there: [1/16, 15/16] keeps fits off both
    #: ends (docs/4d.md, "Text to 4D"); the shipped tiny-video (harmonics+ramp) needs none
    time_window: List[float] = field(default_factory=lambda: [0.0, 1.0])
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
    """The registered class of ``prior.type`` builds itself (``from_config``): the only construction path."""
    from ..registry import component_class

    return component_class("prior", cfg.type, "prior.type").from_config(cfg, device)


#: priors kept by :func:`cached_prior`, newest last (a worker that runs many fits loads each prior once)
_CACHE: "Dict[str, Any]" = {}
#: how many different priors a process keeps (the oracle's differ per prompt: its targets are in its config)
CACHE_SIZE = 4


def cached_prior(cfg: Any, device: torch.device):
    """The prior of ``cfg`` on ``device``, built once per process and reused (frozen priors hold no state a fit
    changes); the least recently used of more than :data:`CACHE_SIZE` is dropped."""
    import json

    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    key = json.dumps([plain, str(device)], sort_keys=True, default=str)
    if key in _CACHE:
        _CACHE[key] = _CACHE.pop(key)  # most recently used last
        return _CACHE[key]
    check_prior_config(cfg)
    prior = build_prior(cfg, device)
    _CACHE[key] = prior
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    return prior


def check_prior_config(cfg: Any) -> None:
    """Fail before any work when the prior's files are missing (folder of a checkpoint, target meshes): the
    registered class of ``prior.type`` checks its own section (``check_config``)."""
    from ..registry import component_class

    component_class("prior", cfg.type, "prior.type").check_config(cfg)
