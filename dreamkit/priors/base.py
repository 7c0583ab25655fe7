"""The ``Prior`` interface: a frozen diffusion model that predicts noise.

Every prior — a diffusers checkpoint, the embedded tiny prior, the exact oracle — answers the same calls, so guidance
code never knows which one it talks to. Conventions:

* images are [B, 3, H, W] in [0, 1]; ``encode`` maps them to the model's space x (latents for latent priors,
  ``2·img − 1`` for pixel priors), ``decode`` maps back;
* the forward process is x_t = sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε with ᾱ = ``alphas_cumprod`` [T_train];
* ``predict`` returns ε̂ [B, C, h, w] (v-prediction models convert inside);
* ``views`` > 1 marks a multi-view prior (the batch is B = n·views, consecutive groups of ``views`` cameras);
  ``frames`` > 1 a video prior. Both are 1 for single-image priors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..cameras import Cameras
from ..types import TextCond


class Prior(nn.Module, ABC):
    """Base class; subclasses set ``alphas_cumprod`` (buffer), ``resolution``, ``channels``."""

    #: side of the square image the model was trained at (pixels, in image space)
    resolution: int = 64
    #: channels of x (4 for SD latents, 3 for pixel priors)
    channels: int = 3
    views: int = 1
    frames: int = 1
    #: True when x lives in a learned latent space (encode/decode are not the identity map)
    latent: bool = False
    #: classifier-free guidance scale that ``dreamkit sample`` uses when --guidance is not given (a model's own
    #: recommendation, as diffusers pipelines default per model; 7.5 is Stable Diffusion's)
    sample_guidance_scale: float = 7.5
    #: networks stored in channels-last (NHWC) memory format; their inputs are laid out the same (:meth:`_layout`)
    channels_last: bool = False
    #: replay the denoiser's forward from CUDA graphs (:class:`CudaGraphCache`) when no gradient is asked for
    cuda_graph: bool = False
    #: the text encoder was trained on view-suffixed prompts ("…, front view"), so the prompt component may append
    #: them (``dreamkit.prompts``); priors never parse suffixes off
    view_prompts: bool = True

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """A network input in the weights' memory format (a no-op when it already is). Also for NCHW weights: a
        render permuted from [B, H, W, 3] is NHWC in memory, and a convolution given such an input runs (and makes
        every later layer run) channels-last — on an H200 that made the SD 2.1 VAE's encode + backward 20% slower."""
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _unet_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Optional[Cameras],
                     dtype: torch.dtype, network: Optional[torch.nn.Module] = None,
                     timestep_cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The raw UNet output (float32) of a diffusers-backed prior (``unet``, ``view_settings``,
        ``_unet_forward``): its inputs built by ``view_settings`` in ``dtype`` and this prior's layout, then either
        the prior's own UNet (through the CUDA-graph cache when on) or ``network`` — another UNet of the same
        architecture, VSD's trainable copy — run eagerly with ``timestep_cond`` added to its time embedding."""
        self.view_settings.check_batch(x_t.shape[0], cameras)
        self.view_settings.check_timesteps(t)
        labels = self.view_settings.class_labels(cond, cameras, x_t.device, dtype)
        cond = self.view_settings.text_tokens(cond)
        x_in = self._layout(self.view_settings.unet_input(x_t, cameras, dtype, labels,
                                                          self.unet if network is None else network))
        if network is None:
            extra = () if labels is None else (labels,)
            return self._denoiser(self._unet_forward, x_in, t, cond.to(dtype), *extra).float()
        kwargs = {"class_labels": labels} if labels is not None else {}
        if timestep_cond is not None:
            kwargs["timestep_cond"] = timestep_cond.to(dtype)
        return network(x_in, t, encoder_hidden_states=cond.to(dtype), **kwargs).sample.float()

    def _unet_forward(self, x_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, *labels: torch.Tensor):
        """The prior's own UNet (``self.unet``) on prepared inputs; class labels, when any, as the last tensor (a bound
        method with a fixed signature, so the CUDA-graph cache can key on it)."""
        kwargs = {"class_labels": labels[0]} if labels else {}
        return self.unet(x_in, t, encoder_hidden_states=cond, **kwargs).sample

    def _denoiser(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """``fn(*tensors)``, through this prior's CUDA-graph cache when ``cuda_graph`` is on (else eagerly)."""
        if not self.cuda_graph:
            return fn(*tensors)
        cache = self.__dict__.get("_graph_cache")
        if cache is None:
            cache = self.__dict__["_graph_cache"] = CudaGraphCache()
        return cache(fn, *tensors)

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Prior":
        """Build from a validated ``prior`` config section on ``device`` (the registry's construction path,
        ``dreamkit.priors.configs.build_prior``)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    @staticmethod
    def check_config(cfg) -> None:
        """Raise DreamkitError (one line) for a section whose files are missing, before any work."""

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def encode_text(self, prompts: Sequence[str], negative: Optional[Sequence[str]] = None) -> TextCond:
        """Encode P prompts (and P negative prompts, default empty) into a TextCond with P variants."""

    def check_prompt(self, prompt: str, negative: str = "") -> None:
        """Raise DreamkitError for a prompt this prior cannot express (or warn), before any work; by default the
        prompt is encoded once."""
        with torch.no_grad():
            self.encode_text([prompt], [negative])

    @abstractmethod
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cameras: Optional[Cameras] = None) -> torch.Tensor:
        """ε̂(x_t, t, cond): x_t [B, C, h, w], t [B] integer timesteps, cond [B, ...] (a TextCond field)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] → x [B, C, h, w]. Pixel priors: resize to ``resolution`` and map to [-1, 1]."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = nn.functional.interpolate(images, (self.resolution, self.resolution), mode="bilinear",
                                               align_corners=False)
        return images * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, h, w] → images [B, 3, H, W] in [0, 1]."""
        return ((x + 1) / 2).clamp(0, 1)

    def predict_cfg(self, x_t: torch.Tensor, t: torch.Tensor, text: TextCond, guidance_scale: float,
                    cameras: Optional[Cameras] = None) -> torch.Tensor:
        """Classifier-free guidance: ε̂_u + s·(ε̂_c − ε̂_u), one batched call (Ho & Salimans 2022)."""
        x_in = torch.cat([x_t, x_t])
        t_in = torch.cat([t, t])
        c_in = torch.cat([text.cond, text.uncond])
        cams = Cameras.cat([cameras, cameras]) if cameras is not None else None
        eps_c, eps_u = self.predict(x_in, t_in, c_in, cams).chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)


def epsilon_from_output(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                        prediction_type: str) -> torch.Tensor:
    """A network's output as ε̂: as it is (``epsilon``); from v = √ᾱ·ε − √(1−ᾱ)·x0 and x_t = √ᾱ·x0 + √(1−ᾱ)·ε,
    ε = √ᾱ·v + √(1−ᾱ)·x_t (``v_prediction``, Salimans & Ho 2022); from x0, ε = (x_t − √ᾱ·x0)/√(1−ᾱ) (``sample``)."""
    if prediction_type == "epsilon":
        return out
    abar = alphas_cumprod.to(x_t.device)[t.long()].view(-1, *([1] * (x_t.dim() - 1)))
    if prediction_type == "v_prediction":
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t.float()
    return (x_t.float() - abar.sqrt() * out) / (1 - abar).sqrt()


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        schedule: str = "scaled_linear") -> torch.Tensor:
    """ᾱ_t for the DDPM β schedules used by Stable Diffusion (scaled_linear) and DDPM (linear)."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; use 'scaled_linear' or 'linear'")
    return torch.cumprod(1 - betas, 0).float()


def resolve_auto(value, auto: bool, key: str) -> bool:
    """A config flag that may be ``auto``: ``auto`` → ``auto`` (the device's default), true/false as given."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "auto":
            return bool(auto)
        if lowered in ("true", "false"):
            return lowered == "true"
        from ..errors import ConfigError

        raise ConfigError(f"{key}={value!r} — use auto, true or false")
    return bool(value)


class CudaGraphCache:
    """Replays a network's forward from CUDA graphs, one per input signature (shapes, strides, dtypes).

    A denoiser's forward is a few thousand small kernels; on a GPU machine whose CPU launches them slower than the GPU
    runs them (the SD 2.1 UNet at batch 8 on an H200), replaying a captured graph removes the launch cost. The
    capture follows PyTorch's recipe (torch.cuda.graphs): warm-up iterations on a side stream (cuDNN picks its
    algorithms there), capture into a private memory pool, then copy each call's inputs into the static input
    buffers, replay, and clone the static output. Used only where it is exact: CUDA tensors, no autograd (with
    gradients enabled, or on the CPU, ``fn`` runs eagerly). The forward must not synchronise with the host (see
    tests/test_bench.py::test_cuda_steps_do_not_synchronize) nor branch on tensor values. At most ``max_graphs``
    signatures are captured; others run eagerly.
    """

    def __init__(self, warmup: int = 2, max_graphs: int = 8):
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict = {}

    def __call__(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not tensors or not all(t.is_cuda for t in tensors):
            return fn(*tensors)
        key = (fn.__qualname__,) + tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return fn(*tensors)
            entry = self.graphs[key] = self._capture(fn, tensors)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _capture(self, fn, tensors):
        static_in = [t.clone() for t in tensors]
        side = torch.cuda.Stream(device=tensors[0].device)
        side.wait_stream(torch.cuda.current_stream(tensors[0].device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static_in)
        torch.cuda.current_stream(tensors[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (loaders) may use CUDA
            static_out = fn(*static_in)
        return graph, static_in, static_out
