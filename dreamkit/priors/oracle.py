"""The oracle prior: the exact denoiser of a known, finite set of target renders.

For target meshes M_1..M_K with text labels, the data distribution at camera c is taken to be the (weighted)
mixture of point masses at the renders R_c(M_k), x = 2·img − 1 in pixel space. Its Gaussian-smoothed version at
noise level t, q_t(x_t) = Σ_k w_k·N(x_t; α_t·R_c(M_k), σ_t²·I), has the exact posterior mean (Tweedie's formula;
see Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", for the ideal denoiser
of a finite data set):

    x̂0 = Σ_k softmax_k(log w_k − ‖x_t − α_t·R_c(M_k)‖² / 2σ_t²) · R_c(M_k),   ε̂ = (x_t − α_t·x̂0) / σ_t,

with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t). A prompt selects the targets whose label it names (weights w_k > 0); the
unconditional distribution is the mixture over all targets. Score distillation against it has known answers: one
target must be recovered exactly, several expose mode seeking versus mode covering, and classifier-free guidance can
be studied without a learned model.

**4D.** A target may move (``motion``: one of :data:`dreamkit.world.motion.MOTIONS`): its render at a camera is then
the mesh moved to the camera's time τ, so the prior is the exact denoiser of an animated target seen at (camera, τ).
With ``frames`` = F > 1 the prior denoises clips of F consecutive images jointly, as a video prior: the data are the
targets' clips, and the posterior weights over targets are the clip's (the squared distances summed over its frames).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from ..cameras import Cameras
from ..errors import ConfigError, DreamkitError
from ..render.raster import render_mesh_colors
from ..types import TextCond
from ..world.meshes import load_colored_mesh
from ..world.motion import Motion, motion_named, transform_points
from .base import Prior, ddpm_alphas_cumprod

__all__ = ["OraclePrior", "normalize_prompt"]

DEFAULT_TARGETS = ({"mesh": "meshes/house.ply", "label": "a house"},)


def normalize_prompt(text: str) -> str:
    """Lower-case, collapse whitespace, drop trailing punctuation. (View suffixes never reach the oracle: it takes no
    view text, ``view_prompts`` = False, so the prompt component sends the prompt alone.)"""
    return " ".join(text.lower().split()).strip(" .,;")


class OraclePrior(Prior):
    """A pixel-space prior whose ε̂ is exact for a mixture of target-mesh renders (see the module docstring).

    Args:
        targets: list of ``{"mesh": path or asset name, "label": text, "weight": float = 1}``; defaults to the
            sample house labelled "a house".
        resolution: side of the square images x [B, 3, r, r]; renders use the cameras' poses and field of view at
            this size.
        background: [3] colour behind the targets, in [0, 1].
        ssaa: supersampling factor of the target renders (antialiased edges).
        beta_schedule, num_train_timesteps: the ᾱ_t schedule (:func:`dreamkit.priors.base.ddpm_alphas_cumprod`).
        uncond: what the unconditional branch is; only ``"all"`` (the mixture over every target) for now.
        light_dir_world, ambient, diffuse: the fixed shading of :func:`dreamkit.render.raster.render_mesh_colors`.

    Text conditions are [P, K] mixture weights (``TextCond.cond`` and ``.uncond``), so ``predict`` takes
    ``cond`` [B, K].
    """

    channels = 3
    latent = False
    view_prompts = False

    def __init__(
        self,
        targets: Optional[Sequence[dict]] = None,
        resolution: int = 64,
        background: Sequence[float] = (1.0, 1.0, 1.0),
        ssaa: int = 2,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        uncond: str = "all",
        light_dir_world: Sequence[float] = (0.4, 0.8, 0.45),
        ambient: float = 0.35,
        diffuse: float = 0.65,
        frames: int = 1,
    ):
        super().__init__()
        if int(frames) < 1:
            raise ConfigError(f"prior.frames={frames} — use 1 (an image prior) or the frames per clip")
        self.frames = int(frames)
        targets = list(DEFAULT_TARGETS if targets is None else targets)
        if not targets:
            raise ConfigError("OraclePrior needs at least one target {mesh: ..., label: ...}")
        if uncond != "all":
            raise ConfigError(f"OraclePrior uncond={uncond!r} is not supported; use 'all'")
        self.resolution = int(resolution)
        self.ssaa = int(ssaa)
        self.uncond_mode = uncond
        self.shading = dict(light_dir_world=tuple(light_dir_world), ambient=float(ambient), diffuse=float(diffuse))
        self.labels: list[str] = []
        self.meshes: list[str] = []
        self.motions: list[Motion] = []
        weights = []
        for k, target in enumerate(targets):
            if not isinstance(target, dict) or "mesh" not in target or "label" not in target:
                raise ConfigError(f"OraclePrior target {k} must be a mapping with 'mesh' and 'label', got {target!r}")
            unknown = set(target) - {"mesh", "label", "weight", "motion"}
            if unknown:
                raise ConfigError(f"OraclePrior target {k} has unknown keys {sorted(unknown)}; "
                                  "allowed: mesh, label, weight, motion")
            weight = float(target.get("weight", 1.0))
            if weight <= 0:
                raise ConfigError(f"OraclePrior target {k} weight must be > 0, got {weight}")
            verts, faces, colors = load_colored_mesh(target["mesh"])
            self.register_buffer(f"_verts_{k}", verts, persistent=False)
            self.register_buffer(f"_faces_{k}", faces, persistent=False)
            self.register_buffer(f"_colors_{k}", colors, persistent=False)
            self.labels.append(str(target["label"]))
            self.meshes.append(str(target["mesh"]))
            self.motions.append(motion_named(target.get("motion") or "still"))
            weights.append(weight)
        self._normalized_labels = [normalize_prompt(label) for label in self.labels]
        self.register_buffer("target_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32), persistent=False)
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod(num_train_timesteps, schedule=beta_schedule),
                             persistent=False)
        self._cache: Optional[tuple[torch.Tensor, int, int, torch.Tensor]] = None

    def _apply(self, fn, *args, **kwargs):
        self._cache = None  # cached renders live on the old device/dtype
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ targets
    @property
    def num_targets(self) -> int:
        return len(self.labels)

    def target_mesh(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(verts [V, 3], faces [F, 3], face_colors [F, 3]) of target k."""
        return getattr(self, f"_verts_{k}"), getattr(self, f"_faces_{k}"), getattr(self, f"_colors_{k}")

    @property
    def dynamic(self) -> bool:
        """Whether any target moves (its renders depend on the cameras' time)."""
        return any(m.name != "still" for m in self.motions)

    def _render_target(self, k: int, cameras: Cameras) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1]: target k seen by ``cameras`` at their own image size (a moving target at each
        camera's time: one render per distinct time)."""
        verts, faces, colors = self.target_mesh(k)
        cameras = cameras.to(verts.device)

        def render(v: torch.Tensor, cams: Cameras) -> torch.Tensor:
            rgb, _, _ = render_mesh_colors(v, faces, cams, face_colors=colors, background=self.background,
                                           ssaa=self.ssaa, **self.shading)
            return rgb.permute(0, 3, 1, 2)

        if self.motions[k].name == "still":
            return render(verts, cameras).contiguous()
        times, groups = cameras.time_groups()
        moved = transform_points(verts, self.motions[k], times.cpu()).to(verts)
        out = torch.empty(len(cameras), 3, cameras.height, cameras.width, device=verts.device)
        for i, idx in enumerate(groups):
            out[idx] = render(moved[i], cameras[idx])
        return out

    def target_index(self, label_or_index: Union[str, int]) -> int:
        """The index of a target given by index or by label (normalised as prompts are)."""
        if isinstance(label_or_index, int):
            if not 0 <= label_or_index < self.num_targets:
                raise DreamkitError(f"target index {label_or_index} out of range: the oracle has {self.num_targets}")
            return label_or_index
        wanted = normalize_prompt(label_or_index)
        hits = [k for k, label in enumerate(self._normalized_labels) if label == wanted]
        if len(hits) != 1:
            what = "matches no target" if not hits else f"matches targets {hits}; pass an index"
            raise DreamkitError(f"label {label_or_index!r} {what}; labels: {self.labels}")
        return hits[0]

    @torch.no_grad()
    def target_images(self, cameras: Cameras, label_or_index: Union[str, int] = 0) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1]: the target rendered by ``cameras`` at their image size (for PSNR on held-out
        views). Rendered with the same shading, background and supersampling as the prior's targets."""
        return self._render_target(self.target_index(label_or_index), cameras)

    @torch.no_grad()
    def render_targets(self, cameras: Cameras) -> torch.Tensor:
        """[B, K, 3, r, r] in x space ([-1, 1]): every target at the prior's resolution, cached for repeated
        cameras (classifier-free guidance evaluates the same cameras twice; duplicates are rendered once)."""
        keys = torch.cat([cameras.c2w.reshape(len(cameras), -1), cameras.K.reshape(len(cameras), -1),
                          cameras.time.reshape(len(cameras), 1)], 1)
        keys = keys.to(self.alphas_cumprod.device, torch.float64)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        cache = self._cache
        if (cache is not None and cache[1] == cameras.width and cache[2] == cameras.height
                and cache[0].shape == unique.shape and torch.equal(cache[0], unique)):
            renders = cache[3]
        else:
            first = torch.full((unique.shape[0],), len(cameras), dtype=torch.long, device=inverse.device)
            first.scatter_reduce_(0, inverse, torch.arange(len(cameras), device=inverse.device), reduce="amin")
            cams = cameras[first.to(cameras.c2w.device)].with_resolution(self.resolution, self.resolution)
            renders = torch.stack([self._render_target(k, cams) for k in range(self.num_targets)], 1) * 2 - 1
            self._cache = (unique, cameras.width, cameras.height, renders)
        return renders[inverse.to(renders.device)]

    # ------------------------------------------------------------------ text
    def _weights_for(self, prompt: str) -> torch.Tensor:
        wanted = normalize_prompt(prompt)
        match = torch.tensor([label == wanted for label in self._normalized_labels], device=self.target_weights.device)
        if not bool(match.any()):
            raise DreamkitError(
                f"the oracle prior cannot express the prompt {prompt!r}: it matches none of the target labels "
                f"{self.labels} (matching ignores case, extra spaces and trailing punctuation)"
            )
        return self.target_weights * match

    def encode_text(self, prompts: Sequence[str], negative: Optional[Sequence[str]] = None) -> TextCond:
        """P prompts → TextCond with ``cond`` [P, K] (the weights of the targets whose label the prompt names) and
        ``uncond`` [P, K] (all targets, or the targets a non-empty negative prompt names)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if negative is None or isinstance(negative, str):
            negative = [negative or ""] * len(prompts)
        if len(negative) != len(prompts):
            raise DreamkitError(f"got {len(prompts)} prompts but {len(negative)} negative prompts")
        cond = torch.stack([self._weights_for(p) for p in prompts])
        uncond = torch.stack([self.target_weights.clone() if not n.strip() else self._weights_for(n)
                              for n in negative])
        return TextCond(cond, uncond, prompts)

    # ------------------------------------------------------------------ denoising
    def _alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)

    def _check(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Optional[Cameras]):
        if cameras is None:
            raise DreamkitError("the oracle prior renders its targets at the given cameras: pass cameras to predict")
        B = x_t.shape[0]
        r = self.resolution
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (3, r, r):
            raise DreamkitError(f"oracle prior expects x_t [B, 3, {r}, {r}], got {tuple(x_t.shape)}")
        if len(cameras) != B:
            raise DreamkitError(f"x_t has {B} samples but {len(cameras)} cameras were given")
        if cond.ndim != 2 or tuple(cond.shape) != (B, self.num_targets):
            raise DreamkitError(f"oracle prior expects cond [B, K] = [{B}, {self.num_targets}] target weights "
                                f"(from its encode_text), got {tuple(cond.shape)}")
        t = torch.as_tensor(t, device=x_t.device)
        return t.expand(B) if t.ndim == 0 else t

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device) -> "OraclePrior":
        """From a validated ``prior`` section (``configs.OraclePriorConfig``); meshes resolved as assets or files."""
        from ..assets import asset_path

        targets = [dict(t, mesh=str(asset_path(t["mesh"]))) for t in cfg.targets]
        return cls(targets=targets, resolution=cfg.resolution, background=tuple(cfg.background),
                   ssaa=cfg.ssaa, frames=int(getattr(cfg, "frames", 1))).to(device)

    @staticmethod
    def check_config(cfg: Any) -> None:
        """At least one {mesh, label} target, each mesh found — before any work."""
        from ..assets import asset_path
        from ..errors import DreamkitError

        if not cfg.targets:
            raise DreamkitError("prior.targets is empty — the oracle needs at least one {mesh, label} target")
        for i, target in enumerate(cfg.targets):
            if "mesh" not in target or "label" not in target:
                raise DreamkitError(f"prior.targets[{i}] needs keys mesh and label, got {dict(target)}")
            unknown = set(target) - {"mesh", "label", "weight", "motion"}
            if unknown:
                raise DreamkitError(f"prior.targets[{i}] has unknown keys {sorted(unknown)} — allowed: mesh, label, "
                                    "weight, motion")
            motion_named(target.get("motion") or "still")
            asset_path(target["mesh"])

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """The exact posterior mean x̂0 [B, 3, r, r] (x space) of the cond-weighted target mixture."""
        t = self._check(x_t, t, cond, cameras)
        renders = self.render_targets(cameras).to(x_t)  # [B, K, 3, r, r]
        alpha, sigma = self._alpha_sigma(t, x_t)
        sq_dist = (x_t[:, None] - alpha[:, None] * renders).flatten(2).square().sum(-1)  # [B, K]
        if self.frames > 1:  # a clip's frames share one noise level and one target: the clip's posterior
            F = self.frames
            if sq_dist.shape[0] % F or bool((t.view(-1, F) != t.view(-1, F)[:, :1]).any()):
                raise DreamkitError(f"this oracle denoises clips of {F} frames: the batch ({sq_dist.shape[0]}) must "
                                    f"be whole clips, each with one timestep")
            sq_dist = sq_dist.view(-1, F, sq_dist.shape[1]).sum(1).repeat_interleave(F, 0)
        # float64 logits: at small t, ‖·‖² / 2σ² reaches ~1e7 and float32 would lose the differences.
        logits = -sq_dist.double() / (2 * sigma.view(-1, 1).double() ** 2) + torch.log(cond.double().clamp(min=0))
        if bool(torch.isinf(logits).all(-1).any()):
            raise DreamkitError("a cond row gives weight 0 to every target; build cond with encode_text")
        weights = torch.softmax(logits, dim=-1).to(x_t.dtype)
        return torch.einsum("bk,bkchw->bchw", weights, renders)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cameras: Optional[Cameras] = None) -> torch.Tensor:
        """Exact ε̂ = (x_t − α_t·x̂0) / σ_t for x_t [B, 3, r, r], t [B] timesteps, cond [B, K] weights."""
        t = self._check(x_t, t, cond, cameras)
        x0 = self.predict_x0(x_t, t, cond, cameras)
        alpha, sigma = self._alpha_sigma(t, x_t)
        return (x_t - alpha * x0) / sigma
