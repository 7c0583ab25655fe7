"""Stable Diffusion 1.x / 2.x as a :class:`~dreamkit.priors.base.Prior`, loaded from a diffusers-format folder or a
Hugging Face hub id.

The components are the diffusers / transformers classes a ``StableDiffusionPipeline`` holds (``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextModel``, the CLIP tokenizer and the scheduler config), loaded one by one, frozen and put
in eval mode. The embedded tiny prior (:mod:`dreamkit.priors.tiny_random`) is such a folder too, so tests run the
same code as a real checkpoint.

Spaces and shapes:

* images [B, 3, H, W] in [0, 1]  ──encode──►  latents x [B, 4, h, w], h = ``resolution`` / vae scale factor,
  already multiplied by the VAE ``scaling_factor`` (0.18215 for SD), so x has roughly unit variance;
* ``predict(x_t, t, cond)`` → ε̂ [B, 4, h, w] float32; v-prediction checkpoints (SD 2.x 768-v) are converted to ε;
* ``encode_text`` → :class:`~dreamkit.types.TextCond` with cond / uncond [P, T, D] (T = 77, D = 768 or 1024).
"""
from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import ClassVar, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..cameras import Cameras
from ..errors import DreamkitError
from ..types import TextCond
from .base import Prior, epsilon_from_output

__all__ = ["StableDiffusionPrior", "resolve_dtype"]

_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# A hub id: "name" or "owner/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_PROBE_TIMEOUT_S = 10.0

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: Union[str, torch.dtype], device: torch.device) -> torch.dtype:
    """``"auto"`` → fp16 on CUDA, fp32 elsewhere; names as ``"fp16"``/``"float16"``; a torch.dtype as is.

    Half precision on the CPU is allowed when asked for explicitly, with a warning: bf16 convolutions on a CPU
    are two orders of magnitude slower than fp32 (measured: 963 s against 16 s for one SD-2.1 UNet forward).
    """
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif str(dtype).lower() == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    elif str(dtype).lower() in _DTYPES:
        resolved = _DTYPES[str(dtype).lower()]
    else:
        raise DreamkitError(f"unknown prior dtype {dtype!r} — use prior.dtype=auto, fp32, fp16 or bf16")
    if device.type == "cpu" and resolved != torch.float32:
        warnings.warn(f"prior dtype {resolved} on the CPU is very slow; prior.dtype=auto picks fp32 there",
                      stacklevel=3)
    return resolved


def _one_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception message, shortened, for one-line user-facing errors."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _looks_like_path(name: str) -> bool:
    """True when ``name`` is meant as a folder rather than a hub id ("owner/name")."""
    if os.path.exists(os.path.expanduser(name)):
        return True
    if name.startswith((".", "/", "~")) or "\\" in name or (os.altsep and os.altsep in name):
        return True
    # Hub ids have at most one '/', so 'assets/models/sd' is a path; 'assets/sd' stays ambiguous and is tried
    # on the hub, whose error message then says that no such folder exists either.
    return name.count("/") > 1 or not _HUB_ID.match(name)


def _hub_offline(local_files_only: Optional[bool]) -> bool:
    if local_files_only:
        return True
    if local_files_only is False:
        return False
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _download_hint(name: str) -> str:
    return (f"on a machine with network run `hf download {name} --local-dir DIR` "
            f"(`huggingface-cli download` on older huggingface_hub), copy DIR here and pass prior.name=DIR")


def _load_components(source: str, local_files_only: bool, dtype: torch.dtype,
                     unet_class: str = "UNet2DConditionModel", safetensors_only: bool = False) -> dict:
    """Load the five parts from a folder or hub id, on the CPU; the UNet (diffusers' ``unet_class``: the 2D UNet of
    Stable Diffusion, or ``UNet3DConditionModel`` of a ModelScope text-to-video folder) and VAE already in
    ``dtype``. No code from the folder runs (no ``trust_remote_code``); with ``safetensors_only`` the weights must
    be safetensors (never a pickle)."""
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    unet_type = getattr(diffusers, unet_class)

    kw = {"local_files_only": local_files_only}
    model_kw = dict(kw, torch_dtype=dtype)
    if safetensors_only:
        model_kw["use_safetensors"] = True  # in from_pretrained, so diffusers keeps its fp32-only modules
    if importlib.util.find_spec("accelerate") is None:
        model_kw["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, without the warning
    return {
        "tokenizer": AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
        "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw,
                                                      **({"use_safetensors": True} if safetensors_only else {})),
        "unet": unet_type.from_pretrained(source, subfolder="unet", **model_kw),
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **model_kw),
        # SD folders ship a PNDM config; DDIM reads the same β schedule and prediction_type from it.
        "scheduler": DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
    }


def _load_from_folder(name: str, dtype: torch.dtype, unet_class: str = "UNet2DConditionModel",
                      safetensors_only: bool = False) -> tuple[dict, str]:
    folder = Path(name).expanduser()
    if not folder.exists():
        raise DreamkitError(f"prior folder not found: {name} — pass prior.name=<folder with model_index.json> "
                            f"or a Hugging Face id")
    if not folder.is_dir():
        raise DreamkitError(f"prior.name={name} is a file, not a folder — pass prior.name=<folder with "
                            f"model_index.json> or a Hugging Face id")
    missing = [sub for sub in _SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise DreamkitError(f"{name} is not a Stable Diffusion folder in diffusers format (missing "
                            f"{', '.join(m + '/' for m in missing)}) — pass prior.name=<folder with model_index.json "
                            f"and {'/, '.join(_SUBFOLDERS)}/>")
    if (folder / "text_encoder_2").is_dir():
        raise DreamkitError(f"{name} looks like Stable Diffusion XL (it has text_encoder_2/), which "
                            f"StableDiffusionPrior does not support — pass an SD 1.x/2.x folder")
    try:
        parts = _load_components(str(folder), local_files_only=True, dtype=dtype, unet_class=unet_class,
                                 safetensors_only=safetensors_only)
    except OSError as err:
        raise DreamkitError(f"could not load the prior from {name}: {_one_line(err)} — check that the folder is a "
                            f"complete diffusers Stable Diffusion pipeline (StableDiffusionPipeline.save_pretrained)"
                            ) from err
    resolved = folder.resolve()
    # The folder's identity for the text cache: its path and when the text encoder was last written, so a folder
    # rebuilt in place (tests, scripts/make_tiny_sd.py) does not return stale embeddings.
    stamp = max((f.stat().st_mtime_ns for f in (resolved / "text_encoder").iterdir()), default=0)
    return parts, f"{resolved}@{stamp}"


def _load_from_hub(name: str, local_files_only: Optional[bool], dtype: torch.dtype,
                   unet_class: str = "UNet2DConditionModel", safetensors_only: bool = False) -> tuple[dict, str]:
    """Cache first (no network, fails in milliseconds), then — unless offline — a short probe of the hub before the
    download, because the hub client retries unreachable hosts for tens of seconds."""
    try:
        return _load_components(name, local_files_only=True, dtype=dtype, unet_class=unet_class,
                                 safetensors_only=safetensors_only), name
    except Exception as err:  # noqa: BLE001 - any failure to load from the cache means: try the network
        local_error = err
    if _hub_offline(local_files_only):
        raise DreamkitError(f"could not load {name!r}: no folder of that name and no copy in the Hugging Face cache, "
                            f"and the hub is off (local_files_only or HF_HUB_OFFLINE) — {_download_hint(name)}"
                            ) from local_error

    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=_PROBE_TIMEOUT_S)
    except GatedRepoError as err:
        raise DreamkitError(f"could not load {name!r}: the model is gated — accept its licence on "
                            f"huggingface.co/{name} and run `hf auth login`, or pass prior.name=<local folder>"
                            ) from err
    except RepositoryNotFoundError as err:
        raise DreamkitError(f"could not load {name!r}: no such folder here and no such model on the Hugging Face hub "
                            f"— check the name, or pass prior.name=<folder with model_index.json>") from err
    except Exception as err:  # noqa: BLE001 - DNS, refused connection, proxy, timeout, 5xx
        raise DreamkitError(f"could not load {name!r}: no local folder or cached copy and the hub is unreachable "
                            f"({_one_line(err, 80)}) — {_download_hint(name)}") from err
    try:
        return _load_components(name, local_files_only=False, dtype=dtype, unet_class=unet_class,
                                 safetensors_only=safetensors_only), name
    except OSError as err:
        raise DreamkitError(f"could not download {name!r} from the hub: {_one_line(err)} — "
                            f"{_download_hint(name)}") from err


class StableDiffusionPrior(Prior):
    """A frozen Stable Diffusion 1.x / 2.x (ε- or v-prediction) as a latent prior.

    Args:
        name: a diffusers-format folder (``model_index.json`` + unet/ vae/ text_encoder/ tokenizer/ scheduler/) or
            a hub id such as ``"stabilityai/stable-diffusion-2-1-base"`` (loaded from the Hugging Face cache, and
            from the network only when that fails and ``local_files_only`` is not True).
        device: where the models live.
        dtype: ``"auto"`` (fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        local_files_only: True never touches the network; None follows ``HF_HUB_OFFLINE``.
        enable_attention_slicing: trade speed for memory in the UNet's attention.

    Attributes:
        alphas_cumprod: [T_train] float32 buffer from the checkpoint's scheduler config.
        resolution: image side the model was trained at (UNet sample_size × VAE scale factor; 512 for SD 1.5).
        channels: latent channels (4). ``latent`` is True.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` as the checkpoint's scheduler says.
        unet, vae, text_encoder, tokenizer, scheduler: the loaded diffusers / transformers parts (frozen).
    """

    latent = True
    #: the diffusers UNet class of the folder's unet/
    unet_class: ClassVar[str] = "UNet2DConditionModel"
    #: load safetensors weights only (never a pickled .bin)
    safetensors_only: ClassVar[bool] = False
    #: (model identity, dtype, text) → [T, D] embedding, shared by every instance in the process.
    _text_cache: ClassVar[dict[tuple[str, str, str], torch.Tensor]] = {}

    def __init__(self, name: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 dtype: Union[str, torch.dtype] = "auto", local_files_only: Optional[bool] = None,
                 enable_attention_slicing: bool = False, channels_last: Union[bool, str] = "auto",
                 cuda_graph: Union[bool, str] = "auto") -> None:
        super().__init__()
        name = os.fspath(name)
        device = torch.device(device)
        torch_dtype = resolve_dtype(dtype, device)
        if _looks_like_path(name):
            parts, identity = _load_from_folder(name, torch_dtype, self.unet_class, self.safetensors_only)
        else:
            parts, identity = _load_from_hub(name, local_files_only, torch_dtype, self.unet_class,
                                             self.safetensors_only)

        self.name = name
        self._identity = identity
        self.tokenizer = parts["tokenizer"]
        self.scheduler = parts["scheduler"]
        self.unet = parts["unet"]
        self.vae = parts["vae"]
        self.text_encoder = parts["text_encoder"]
        if self.unet.config.get("addition_embed_type"):
            raise DreamkitError(f"{name} has a UNet with added conditioning ({self.unet.config.addition_embed_type}, "
                                f"as SDXL), which StableDiffusionPrior does not support — pass an SD 1.x/2.x model")
        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        from .base import resolve_auto

        self.channels_last = resolve_auto(channels_last, device.type == "cpu", "prior.channels_last")
        self.cuda_graph = resolve_auto(cuda_graph, device.type == "cuda", "prior.cuda_graph")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.unet.to(device, memory_format=memory_format)  # NHWC: see configs.StableDiffusionPriorConfig
        self.vae.to(device, memory_format=memory_format)
        self.text_encoder.to(device=device, dtype=torch_dtype)
        if enable_attention_slicing:
            self.unet.set_attention_slice("auto")
        self.view_settings = self._view_settings(name)
        self.views = self.view_settings.views
        self.frames = self.view_settings.frames

        self.prediction_type = str(self.scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise DreamkitError(f"{name}: unsupported prediction_type {self.prediction_type!r} in scheduler config "
                                f"— StableDiffusionPrior handles epsilon, v_prediction and sample")
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.detach().clone().float().to(device),
                             persistent=False)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, (list, tuple)):
            sample_size = int(sample_size[0])
        self.resolution = int(sample_size) * self.vae_scale_factor
        self.channels = int(self.unet.config.in_channels)
        self.scaling_factor = float(self.vae.config.get("scaling_factor", 0.18215))
        self.shift_factor = float(self.vae.config.get("shift_factor", None) or 0.0)

    # ----------------------------------------------------------------------------------------------------- basics
    def _view_settings(self, name: str):
        """Multi-view (MVDream-style) folders: "views" and "class_condition": "camera" in model_index.json."""
        from .multiview import ViewSettings

        return ViewSettings.from_folder(Path(name).expanduser() if _looks_like_path(name) else None,
                                        self.unet, default_class="camera", allowed=("camera",))

    def _frozen_modules(self) -> tuple[nn.Module, ...]:
        return (self.unet, self.vae, self.text_encoder)

    def train(self, mode: bool = True) -> "StableDiffusionPrior":
        """The pretrained parts stay in eval mode whatever the enclosing system does (their dropout stays off)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the UNet, VAE and text encoder (inputs are cast to it, outputs come back as float32)."""
        return self.unet.dtype

    @classmethod
    def clear_text_cache(cls) -> None:
        cls._text_cache.clear()

    # ------------------------------------------------------------------------------------------------------ text
    def _embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), T, D] last hidden states of the text encoder, each text encoded at most once per process."""
        key_of = {text: (self._identity, str(self.dtype), text) for text in texts}
        missing = list(dict.fromkeys(t for t in texts if key_of[t] not in self._text_cache))
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            # As the SD pipeline: the attention mask goes in only for encoders trained with it.
            mask = tokens.attention_mask.to(self.device) \
                if getattr(self.text_encoder.config, "use_attention_mask", False) else None
            with torch.no_grad():
                hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
            for text, embedding in zip(missing, hidden):
                self._text_cache[key_of[text]] = embedding.detach()
        return torch.stack([self._text_cache[key_of[t]] for t in texts]).to(self.device, self.dtype)

    def encode_text(self, prompts: Sequence[str], negative: Optional[Sequence[str]] = None) -> TextCond:
        """P prompts (and P negative prompts, default ``""``; one negative is repeated) → TextCond [P, T, D]."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if negative is None:
            negative = [""] * len(prompts)
        else:
            negative = [negative] if isinstance(negative, str) else list(negative)
            if len(negative) == 1:
                negative = negative * len(prompts)
        if len(negative) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts and {len(negative)} negative prompts; pass one or as many")
        return TextCond(self._embed(prompts), self._embed(negative), prompts)

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "StableDiffusionPrior":
        """From a validated ``prior`` section (``configs.StableDiffusionPriorConfig``)."""
        return cls(cfg.name, device=str(device), dtype=cfg.dtype, local_files_only=cfg.local_files_only,
                   channels_last=cfg.channels_last, cuda_graph=cfg.cuda_graph)

    @staticmethod
    def check_config(cfg) -> None:
        """A folder name that does not exist fails before any work (hub ids are looked up when loading)."""
        name = str(cfg.name)
        if _looks_like_path(name) and not Path(name).expanduser().is_dir():
            raise DreamkitError(f"prior folder not found: {name} — pass prior.name=<folder with model_index.json> "
                                "or a Hugging Face id such as stabilityai/stable-diffusion-2-1-base")

    # ------------------------------------------------------------------------------------------- image ⇄ latent
    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] → latents [B, 4, h, w] (a sample of the VAE posterior × scaling factor).

        Differentiable: the VAE is frozen but gradients flow back to ``images``. Images are resized to
        ``resolution`` first (bilinear). Returned in the model dtype.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=False)
        x = self._layout((images * 2 - 1).to(self.dtype))
        z = self.vae.encode(x).latent_dist.sample(generator=generator)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, 4, h, w] → images [B, 3, h·f, w·f] in [0, 1], float32 (f = ``vae_scale_factor``)."""
        z = self._layout(latents.to(self.dtype) / self.scaling_factor + self.shift_factor)
        images = self.vae.decode(z).sample.float()
        return ((images + 1) / 2).clamp(0, 1)

    # ---------------------------------------------------------------------------------------------------- noise
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cameras: Optional[Cameras] = None, network: Optional[torch.nn.Module] = None,
                timestep_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ε̂(x_t, t, cond): x_t [B, 4, h, w], t [B] integer timesteps (or a scalar), cond [B, T, D] → [B, 4, h, w]
        float32. ``cameras`` [B] are needed by multi-view (MVDream-style) folders only. ``network``: another UNet of
        this architecture to run instead (VSD's trainable copy, eagerly, with ``timestep_cond`` [B, C] added to its
        time embedding)."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        dtype = self.dtype if network is None else next(network.parameters()).dtype
        out = self._unet_output(x_t, t, cond, cameras, dtype, network, timestep_cond)
        return epsilon_from_output(out, x_t, t, self.alphas_cumprod, self.prediction_type)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, resolution={self.resolution}, prediction_type={self.prediction_type!r}, "
                f"dtype={self.dtype}")
