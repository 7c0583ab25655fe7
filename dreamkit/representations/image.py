"""An image as the representation: the 2D playground of score distillation.

Score distillation papers study their losses on a single image before any 3D (DreamFusion, Poole et al. 2022, §3
and its 2D figures; ProlificDreamer, Wang et al. 2023, §5.1; SDS-Bridge, McAllister et al. 2024, its 2D
experiments): the image is the parameter θ, the "render" g(θ) is the image itself, and every loss runs in seconds.
Here the image goes through the very guidance code a 3D fit uses (``guidance(RenderOutput, Batch, ...)``), so a 2D
run differs from a 3D one only in its representation.

Parameters (``params["pixels"]``, one image [1, C, h, w]):

* pixel priors and the oracle (``prior.latent`` False): the image in [0, 1], C = 3, at ``resolution`` (the prior's
  by default, where ``prior.encode`` is exactly x = 2·pixels − 1). ``activation`` chooses how the parameter stays in
  [0, 1]:

  - ``clamp`` (the default): the parameter *is* the pixels; ``render`` clamps them (a no-op on values) and
    ``post_step`` projects them back into [0, 1] after every optimizer step (projected gradient descent). Inside the
    box the gradient reaches the pixels unchanged: ∂loss/∂pixels = 2·Σ_b g_b / B for a batch of B noise draws of the
    image (x = 2·pixels − 1), i.e. exactly the guidance's g up to that constant (tests/test_ablate.py);
  - ``sigmoid``: pixels = σ(θ), θ unconstrained (the gradient is scaled by σ'(θ), which slows saturated pixels).

* latent priors (``prior.type=stable-diffusion``): the latents x themselves, C = the prior's latent channels, at
  ``resolution`` / the VAE's scale factor, unconstrained. ``render`` hands them to the guidance in
  ``extras["prior_x"]`` (no VAE encoder in the loop, ∂loss/∂x = Σ_b g_b / B) and decodes them with the prior's VAE
  only for viewing (no gradient; during training ``rgb`` is the last decoded view).

Cameras are ignored by the image: every camera of a batch sees the same image (B cameras = B independent noise draws
of it per step, which the guidance averages). The batch's cameras still reach the prior, so the oracle renders its
targets at them: a recipe pins the camera (``camera.*_range`` of width 0) to give the oracle one fixed target image
per mesh (``configs/image_oracle.yaml``). N independent images are ``particles: N`` (each its own image and
optimizer; VSD's φ is shared by them, ProlificDreamer's particles). The background is ignored (the image is opaque).

The image needs its prior to know its size, channels and space: the system calls :meth:`ImageModel.bind_prior`
when the prior is attached; a checkpoint loaded without a prior gets its shape from the checkpoint (``resize_to``).
Exports: ``png`` (the image, decoded for latent priors); mesh, PLY and turntable exporters do not apply
(:attr:`ImageModel.export_formats`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch
from torch import nn

from ..cameras import Cameras
from ..config import sched
from ..errors import ConfigError, DreamkitError
from ..types import RenderOutput

__all__ = ["ImageConfig", "ImageModel", "export_png"]

INITS = ("grey", "noise")
ACTIVATIONS = ("clamp", "sigmoid")


@dataclass
class ImageConfig:
    name: str = "image"
    #: side of the square image in pixels; 0 = the prior's resolution (latent priors: the latents are this / the
    #: VAE's scale factor)
    resolution: int = 0
    #: grey (init_color everywhere) | noise (init_color + init_noise·N(0, 1), smooth (init_noise_size), drawn from
    #: the run's seed)
    init: str = "noise"
    #: RGB in [0, 1] of the initial image (latent priors: encoded by the prior's VAE)
    init_color: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    #: standard deviation of the init noise (pixels in [0, 1]; latents: in latent units)
    init_noise: float = 0.1
    #: the init noise is drawn on a grid of this side and upsampled bilinearly (smooth blobs of colour that set where
    #: a seed starts, without pixel noise that losses with no noise term never remove); 0 = independent per pixel
    init_noise_size: int = 4
    #: how pixels stay in [0, 1]: clamp (projected after each step; the gradient is the guidance's) | sigmoid
    #: (pixels = σ(θ)). Ignored for latent priors (latents are unconstrained)
    activation: str = "clamp"
    #: Adam learning rate of the pixels (or latents); a number or a schedule
    lr: Any = sched(0.01)


class ImageModel(nn.Module):
    """One image (pixels or latents) as a representation; see the module docstring."""

    loss_names: tuple[str, ...] = ()
    #: what ``dreamkit export`` can write of it (other formats are skipped with a message)
    export_formats: tuple[str, ...] = ("png",)

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None):
        super().__init__()
        if cfg.init not in INITS:
            raise ConfigError(f"representation.init={cfg.init!r} — use {' or '.join(INITS)}")
        if cfg.activation not in ACTIVATIONS:
            raise ConfigError(f"representation.activation={cfg.activation!r} — use {' or '.join(ACTIVATIONS)}")
        if int(cfg.resolution) < 0:
            raise ConfigError(f"representation.resolution={cfg.resolution} — a side in pixels, or 0 for the prior's")
        if not float(cfg.init_noise) >= 0:
            raise ConfigError(f"representation.init_noise={cfg.init_noise} must be ≥ 0")
        if int(cfg.init_noise_size) < 0:
            raise ConfigError(f"representation.init_noise_size={cfg.init_noise_size} must be ≥ 0 (0 = per pixel)")
        if len(cfg.init_color) != 3:
            raise ConfigError(f"representation.init_color must have 3 values (RGB in [0, 1]), got "
                              f"{list(cfg.init_color)}")
        self.cfg = cfg
        self.params = nn.ParameterDict()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # the image's size comes from the prior (bind_prior): keep a seed drawn now, so particles built in turn from
        # one generator start from different noise, and a run's image depends on its seed only
        self.init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.latent = False
        object.__setattr__(self, "_prior", None)
        self._view: Optional[torch.Tensor] = None  # the last decoded view of latents [H, W, 3]

    # -- size and initialisation from the prior -------------------------------------------------------------------
    def bind_prior(self, prior: Any) -> None:
        """Take size, channels and space from ``prior`` (called by the system when it attaches the prior) and
        initialise the image if it has no parameter yet (a checkpoint's shape is kept)."""
        object.__setattr__(self, "_prior", prior)
        self.latent = bool(getattr(prior, "latent", False))
        side = int(self.cfg.resolution) or int(prior.resolution)
        factor = int(getattr(prior, "vae_scale_factor", 1)) if self.latent else 1
        if side % factor:
            raise ConfigError(f"representation.resolution={side} must be a multiple of the VAE's scale factor {factor}")
        channels = int(prior.channels) if self.latent else 3
        shape = (1, channels, side // factor, side // factor)
        if "pixels" in self.params and tuple(self.params["pixels"].shape) == shape:
            return
        self.params["pixels"] = nn.Parameter(self._initial(prior, shape))

    @torch.no_grad()
    def _initial(self, prior: Any, shape: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.init_seed)
        color = torch.tensor(list(self.cfg.init_color), dtype=torch.float32).clamp(0, 1).view(1, 3, 1, 1)
        scale = float(self.cfg.init_noise) if self.cfg.init == "noise" else 0.0

        def noise(like: tuple[int, ...]) -> torch.Tensor:
            grid = int(self.cfg.init_noise_size)
            if grid <= 0 or grid >= like[-1]:
                return torch.randn(like, generator=gen)
            coarse = torch.randn(like[0], like[1], grid, grid, generator=gen)
            return nn.functional.interpolate(coarse, size=like[-2:], mode="bilinear", align_corners=False)

        if self.latent:
            side = shape[-1] * int(getattr(prior, "vae_scale_factor", 1))
            device = prior.alphas_cumprod.device
            grey = color.expand(1, 3, side, side).to(device)
            enc_gen = torch.Generator(device=device).manual_seed(self.init_seed)
            try:
                x = prior.encode(grey, generator=enc_gen)
            except TypeError:  # an encoder without a generator argument
                x = prior.encode(grey)
            x = x.float().cpu()
            return x + scale * noise(tuple(x.shape))
        pixels = (color.expand(shape) + scale * noise(shape)).clamp(0, 1)
        if self.cfg.activation == "sigmoid":
            return torch.logit(pixels.clamp(1e-3, 1 - 1e-3))
        return pixels.clone()

    def resize_to(self, shapes: dict[str, torch.Size]) -> None:
        """Allocate the parameter at a checkpoint's shape (a model rebuilt without its prior)."""
        shape = shapes.get("pixels")
        if shape is None:
            return
        if "pixels" not in self.params or self.params["pixels"].shape != shape:
            device = self.params["pixels"].device if "pixels" in self.params else torch.device("cpu")
            self.params["pixels"] = nn.Parameter(torch.zeros(shape, device=device))
        if not self.latent and shape[1] != 3:  # latents rebuilt from a checkpoint (no prior to say so)
            self.latent = True

    def _require(self) -> torch.Tensor:
        if "pixels" not in self.params:
            raise DreamkitError("representation.name=image has no image yet: it takes its size from the prior "
                                "(DreamSystem.attach_prior calls bind_prior) or from a checkpoint")
        return self.params["pixels"]

    # -- the image ------------------------------------------------------------------------------------------------
    def pixels(self) -> torch.Tensor:
        """The image [1, 3, h, w] in [0, 1] (differentiable) for pixel priors; the latents [1, C, h, w] otherwise."""
        raw = self._require()
        if self.latent:
            return raw
        return torch.sigmoid(raw) if self.cfg.activation == "sigmoid" else raw.clamp(0, 1)

    @torch.no_grad()
    def view(self) -> torch.Tensor:
        """The image as seen [H, W, 3] in [0, 1] (latents decoded by the bound prior's VAE)."""
        if not self.latent:
            return self.pixels()[0].permute(1, 2, 0).detach()
        prior = self._prior
        if prior is None:
            if self._view is not None:
                return self._view
            raise DreamkitError("this image lives in a latent space: seeing it needs its prior's VAE, which is not "
                                "loaded here — the fit writes it as exports/image.png when it ends")
        x = self._require().detach()
        image = prior.decode(x.to(prior.alphas_cumprod.device))[0].permute(1, 2, 0).float()
        self._view = image.to(x.device)
        return self._view

    # -- the representation interface -----------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        return [{"name": "image.pixels", "params": [self._require()], "lr_schedule": self.cfg.lr,
                 "lr_key": "representation.lr"}]

    def render(self, cameras: Cameras, background: Optional[torch.Tensor] = None, step: Optional[int] = None,
               **_: Any) -> RenderOutput:
        """The image once per camera (cameras and background are ignored): rgb [B, H, W, 3]; alpha 1, depth 0.
        Latent images also give ``extras["prior_x"]`` [B, C, h, w], which the guidance uses as x directly."""
        n = len(cameras)
        extras: dict[str, Any] = {}
        if self.latent:
            x = self._require()
            extras["prior_x"] = x.expand(n, *x.shape[1:])
            if torch.is_grad_enabled() and self._view is not None:
                rgb = self._view.to(x.device)  # training: the last decoded view (the guidance never reads rgb)
            elif torch.is_grad_enabled() and self._prior is None:
                side = x.shape[-1]
                rgb = x.new_full((side, side, 3), 0.5)
            else:
                rgb = self.view().to(x.device)
            rgb = rgb.expand(n, *rgb.shape)
        else:
            rgb = self.pixels().permute(0, 2, 3, 1).expand(n, -1, -1, -1)
        h, w = rgb.shape[1], rgb.shape[2]
        return RenderOutput(rgb=rgb, alpha=rgb.new_ones(n, h, w, 1), depth=rgb.new_zeros(n, h, w, 1), extras=extras)

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, torch.Tensor]:
        return {}

    def post_step(self, step: int, out: RenderOutput, optimizer: Optional[torch.optim.Optimizer],
                  cameras: Cameras, generator: Optional[torch.Generator] = None) -> dict:
        """``activation: clamp``: project the pixels back into [0, 1] (in place; Adam's state is kept)."""
        if not self.latent and self.cfg.activation == "clamp" and "pixels" in self.params:
            with torch.no_grad():
                self.params["pixels"].clamp_(0, 1)
        return {}

    def export_mesh(self, export_cfg: Any = None):
        """Mesh exporters ask for this: an image has no surface."""
        raise DreamkitError("representation.name=image is a 2D image: it has no mesh to export — use "
                            "export.formats=[png] (dreamkit export <run> --format png)")

    @property
    def colors_hold_lighting(self) -> bool:
        return True


def export_png(model: Any, path: Path, export_cfg: Any = None, background: Optional[torch.Tensor] = None,
               device: Any = "cpu", **_: Any) -> Path:
    """Exporter ``png``: the image representation as it is (latents decoded); any other representation as one
    still render from the turntable camera at azimuth 0 (``export.turntable_*``)."""
    from ..imageio_utils import save_image_grid

    path = Path(path).with_suffix(".png")
    if hasattr(model, "view"):
        image = model.view().clamp(0, 1).cpu()
    else:
        from ..cameras import orbit_cameras

        kw = dict(resolution=256, elevation=15.0, distance=2.75, fovy=40.0)
        if export_cfg is not None:
            kw = dict(resolution=int(export_cfg.turntable_resolution),
                      elevation=float(export_cfg.turntable_elevation),
                      distance=float(export_cfg.turntable_distance), fovy=float(export_cfg.turntable_fovy))
        cams = orbit_cameras(1, kw["resolution"], kw["resolution"], elevation=kw["elevation"],
                             distance=kw["distance"], fovy=kw["fovy"]).to(device)
        bg = (background if background is not None else torch.ones(3)).to(device).expand(1, 3)
        with torch.no_grad():
            image = model.render(cams, background=bg).rgb[0].clamp(0, 1).cpu()
    return save_image_grid(image[None], path, columns=1)

