"""The score-distillation family's common machinery (Part 0 of the guidance family).

:class:`ScoreDistillation` owns what every member shares: timestep sampling and annealing (per group for multi-view
priors), the weighting w(t), classifier-free guidance, gradient clipping and the reparametrised loss. A member supplies
only its gradient on x through :meth:`ScoreDistillation.residual`, the bracket r in g = w(t)·r:

    SDS (DreamFusion):  r = ε̂_s(x_t; y, t) − ε
    ASD (ScaleDreamer): r = ε̂_s(x_t; y, t) − ε̂(x_{t+Δt}; y, t+Δt)

For rendered images mapped to the prior's space x = E(g(θ)), a timestep t and noise ε, x_t = α_t·x + σ_t·ε with
α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t), and ε̂_s = ε̂_u + s·(ε̂_c − ε̂_u) (standard CFG). The loss is
target = stop_grad(x − g), loss = ½‖x − target‖² / B, whose gradient with respect to x is exactly g / B and whose value
½‖g‖²/B is logged (it measures the guidance magnitude, not a likelihood).

Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"), an option of every member
(``perp_neg_prompts`` with ``perp_neg_weights``; off by default, and then nothing here changes a number): of each
negative direction e_k = ε̂(x_t; y_neg_k) − ε̂_ref, only the part perpendicular to the positive direction
e_pos = ε̂_c − ε̂_ref is removed, per sample (flattened C·H·W):

    ε̂_c ← ε̂_c − Σ_k w_k · perp(e_k, e_pos),   perp(a, b) = a − (⟨a, b⟩ / max(‖b‖², 1e-12)) · b

so CFG becomes ε̂_u + s·(e_pos − Σ_k w_k·perp(e_k, e_pos)). ε̂_ref is the member's reference branch (the recipe's
uncond for CFG; ∅ for CSD and NFSD; the source prompt in SDS-Bridge's stage 2). Weights follow the paper's sign: w > 0
pushes away from the negative (threestudio stores the same weights negated, e.g. its −0.5 is 0.5 here). A negative
direction parallel to e_pos has no perpendicular part and changes nothing. Entries of ``perp_neg_prompts`` may contain
``{prompt}``, replaced by each image's prompt text (e.g. "{prompt}, back view").
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ..batch import Batch, Layout
from ..cameras import Cameras
from ..config import sched
from ..priors.base import Prior
from ..schedule import Schedule, value_at
from ..timing import NULL_TIMER
from ..types import RenderOutput

T_ANNEALS = ("random", "linear", "sqrt")
WEIGHTINGS = ("sds", "uniform", "fantasia3d")


@dataclass
class ScoreDistillationConfig:
    name: str = "sds"
    #: classifier-free guidance scale s (DreamFusion uses 100 with Stable Diffusion)
    guidance_scale: Any = sched(100.0)
    #: timestep range as fractions of the prior's training steps
    min_step_percent: Any = sched(0.02)
    max_step_percent: Any = sched(0.98)
    #: random (uniform in range) | linear (deterministic, descending) | sqrt (descending as sqrt, HiFA)
    t_anneal: str = "random"
    #: w(t): sds (1 − ᾱ_t, DreamFusion) | uniform (1) | fantasia3d (sqrt(ᾱ_t)·(1 − ᾱ_t))
    weighting: str = "sds"
    #: clamp each element of the gradient g to [−c, c] (0 = off)
    grad_clip: Any = sched(0.0)
    #: Perp-Neg (Armandpour et al. 2023) negative prompts, encoded as prompts; "{prompt}" is replaced by each image's
    #: prompt text. Empty = off (the default: no extra prior call, identical numbers)
    perp_neg_prompts: List[str] = field(default_factory=list)
    #: one weight (number or schedule) per entry of perp_neg_prompts; w > 0 removes that negative's direction
    #: perpendicular to the positive one (the paper's sign; threestudio's −0.5 is 0.5 here)
    perp_neg_weights: List[Any] = field(default_factory=list)
    #: motion amplification ω over each clip's frames (video priors, camera.frames > 1; 4D-fy's VideoCrafter
    #: guidance, Align Your Gaussians): the residual r_f of frame f becomes r̄ + ω·(r_f − r̄), r̄ the clip's mean.
    #: 1 = off (bitwise)
    motion_amp: Any = sched(1.0)


def amplify_motion(residual: torch.Tensor, frames: int, amp: float) -> torch.Tensor:
    """[B, ...] with B = clips × ``frames`` (consecutive frames of a clip) → r̄ + amp·(r − r̄) per clip, r̄ the mean
    over the clip's frames (motion amplification: the frame mean is kept, the deviations scale by ``amp``)."""
    clips = residual.reshape(-1, frames, *residual.shape[1:])
    mean = clips.mean(1, keepdim=True)
    return (mean + amp * (clips - mean)).reshape(residual.shape)


class ScoreDistillation(nn.Module):
    """Base of the score-distillation losses: subclasses set ``loss_name`` and implement :meth:`residual`. Owns no
    trainable parts (``parameter_groups`` is empty); VSD-style guidance will own some."""

    loss_name = "sds"
    loss_names = ("sds",)
    #: w(t) options a member adds to ``WEIGHTINGS`` (ISM's σ_t/α_t, BSD's α_t): name → w as a function of ᾱ_t
    extra_weightings: dict = {}

    def __init__(self, cfg: Any, prior: Prior, max_steps: int):
        super().__init__()
        if cfg.t_anneal not in T_ANNEALS:
            from ..errors import ConfigError

            raise ConfigError(f"guidance.t_anneal={cfg.t_anneal!r} — use one of {', '.join(T_ANNEALS)}")
        valid = tuple(WEIGHTINGS) + tuple(self.extra_weightings)
        if cfg.weighting not in valid:
            from ..errors import ConfigError

            raise ConfigError(f"guidance.weighting={cfg.weighting!r} — use one of {', '.join(valid)}")
        prompts = list(getattr(cfg, "perp_neg_prompts", None) or [])
        weights = list(getattr(cfg, "perp_neg_weights", None) or [])
        if len(prompts) != len(weights):
            from ..errors import ConfigError

            raise ConfigError(f"guidance.perp_neg_prompts has {len(prompts)} prompt(s) but guidance.perp_neg_weights "
                              f"{len(weights)} weight(s) — give one weight per negative prompt")
        for i, w in enumerate(weights):
            Schedule.parse(w, f"guidance.perp_neg_weights[{i}]")
        self.cfg = cfg
        # the prior is frozen and shared; keep it out of this module's state_dict
        object.__setattr__(self, "prior", prior)
        self.max_steps = max(int(max_steps), 1)
        # sections "encode" (the prior's encoder forward) and "prior" (its noise prediction) for dreamkit bench;
        # a no-op unless the system sets a StepTimer
        object.__setattr__(self, "timer", NULL_TIMER)

    def parameter_groups(self) -> list[dict]:
        return []

    def render_options(self, step: int, batch: Batch) -> dict:
        """Keyword arguments the system passes to the representation's ``render`` this step (a variant of the
        render a member needs, e.g. compositional SDS's one part alone); none by default."""
        return {}

    # -- timesteps -----------------------------------------------------------------------------------------------
    def timestep_range(self, step: int) -> tuple[int, int]:
        n = self.prior.num_train_timesteps
        t_min = int(round(value_at(self.cfg.min_step_percent, step, "guidance.min_step_percent") * n))
        t_max = int(round(value_at(self.cfg.max_step_percent, step, "guidance.max_step_percent") * n))
        t_min = min(max(t_min, 1), n - 1)
        t_max = min(max(t_max, t_min), n - 1)
        return t_min, t_max

    def sample_timesteps(self, batch: int, step: int, generator: Optional[torch.Generator],
                         device: torch.device, layout: Optional[Layout] = None) -> torch.Tensor:
        """[B] integer timesteps for this step, by the configured annealing.

        Random timesteps are drawn per group of the batch's ``layout`` (one noise level per group of V views × F
        frames, as multi-view and video priors were trained, e.g. MVDream) and shared by the group's images.
        """
        t_min, t_max = self.timestep_range(step)
        if self.cfg.t_anneal == "random":
            layout = layout or Layout()
            t = torch.randint(t_min, t_max + 1, (layout.groups(batch),), generator=generator, device=device)
            return layout.per_image(t) if layout.group_size > 1 else t
        frac = min(step / self.max_steps, 1.0)
        if self.cfg.t_anneal == "sqrt":  # HiFA (Zhu et al. 2023): t decreases as the square root of progress
            frac = math.sqrt(frac)
        t = int(round(t_max - (t_max - t_min) * frac))
        return torch.full((batch,), t, dtype=torch.long, device=device)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) [B]."""
        abar = self.prior.alphas_cumprod.to(t.device)[t]
        if self.cfg.weighting in self.extra_weightings:
            return self.extra_weightings[self.cfg.weighting](abar)
        if self.cfg.weighting == "sds":
            return 1 - abar
        if self.cfg.weighting == "uniform":
            return torch.ones_like(abar)
        return abar.sqrt() * (1 - abar)  # Fantasia3D (Chen et al. 2023)

    # -- the loss ------------------------------------------------------------------------------------------------
    def forward(self, out: RenderOutput, batch: Batch, step: int, generator: Optional[torch.Generator] = None,
                t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """A step's renders (``out``: colour, and the alpha, depth, normals a member may use) and its ``batch``
        (cameras, times, text, layout) → {"loss_<name>": scalar, diagnostics ...}. See :meth:`distill`. A
        representation that lives in the prior's own space (the 2D image over a latent prior) gives x itself in
        ``out.extras["prior_x"]``, which is used as x without the encoder."""
        x = out.extras.get("prior_x") if out.extras else None
        if x is not None:
            return self.distill(x, batch, step, generator, t=t, noise=noise, encoded=True)
        return self.distill(out.rgb.permute(0, 3, 1, 2), batch, step, generator, t=t, noise=noise)

    def distill(self, images: torch.Tensor, batch: Batch, step: int, generator: Optional[torch.Generator] = None,
                t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                encoded: bool = False) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1] → {"loss_<name>": scalar, diagnostics ...}; ``batch.text`` has one variant
        per image.

        ``t`` [B] and ``noise`` (shape of the encoded images) may be given, e.g. for common random numbers in
        ablations; by default they are drawn from ``generator`` (timesteps per group of ``batch.layout``).
        """
        with self.timer("encode"):
            x = images if encoded else self.prior.encode(images)  # encoded: images are already x
        size = x.shape[0]
        shard = batch.shard
        if t is None:
            if shard is None:
                t = self.sample_timesteps(size, step, generator, x.device, batch.layout)
            else:  # the whole batch's draw, this rank's rows (dreamkit.distributed)
                t = self.sample_timesteps(shard.size, step, shard.generator, x.device, batch.layout)[shard.index]
        abar = self.prior.alphas_cumprod.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
        with torch.no_grad():
            if noise is None and shard is None:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            elif noise is None:
                noise = torch.randn((shard.size, *x.shape[1:]), generator=shard.generator, device=x.device,
                                    dtype=x.dtype)[shard.index]
            x_t = abar.sqrt() * x.detach() + (1 - abar).sqrt() * noise
            residual, extra = self.residual(x.detach(), x_t, t, noise, batch, step, generator)
            amp = value_at(getattr(self.cfg, "motion_amp", 1.0), step, "guidance.motion_amp")
            if amp != 1.0 and batch.layout.frames > 1:
                residual = amplify_motion(residual, batch.layout.frames, amp)
            grad = self.weight(t).view_as(abar) * residual
            clip = value_at(self.cfg.grad_clip, step, "guidance.grad_clip")
            if clip > 0:
                grad = grad.clamp(-clip, clip)
            grad = torch.nan_to_num(grad)
        target = (x - grad).detach()
        # mean over one particle's images: each particle's gradient is what it would get fitted alone
        loss = 0.5 * ((x - target) ** 2).sum() / (size // batch.layout.particles)
        name = self.loss_name
        out = {
            f"loss_{name}": loss,
            f"{name}_t": t.float().mean().detach(),
            f"{name}_grad_norm": grad.flatten(1).norm(dim=1).mean().detach(),
        }
        out.update({f"{name}_{k}": v for k, v in extra.items()})
        out.update(self.extra_terms(x.detach(), batch, step, generator))
        return out

    def extra_terms(self, x: torch.Tensor, batch: Batch, step: int,
                    generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        """More loss terms computed from this step's encoded renders ``x`` (detached), e.g. VSD's φ loss; none by
        default. Called after the distillation term, with the same generator."""
        return {}

    def guided_prediction(self, x_t: torch.Tensor, t: torch.Tensor, batch: Batch, step: int) -> torch.Tensor:
        """ε̂_s(x_t; y, t): the prior's noise prediction with classifier-free guidance at this step's scale (one
        call when s = 1), timed as the "prior" section. With Perp-Neg on, one batched call [cond, uncond, negatives]
        and ε̂_u + s·(e_pos − Σ_k w_k·perp(e_k, e_pos)) (also at s = 1)."""
        scale = value_at(self.cfg.guidance_scale, step, "guidance.guidance_scale")
        negatives = self.perp_neg_conds(batch, x_t.shape[0])
        if negatives:
            eps_c, eps_u, *eps_neg = self.predictions(x_t, t, [batch.text.cond, batch.text.uncond, *negatives], batch)
            eps_c = self.perp_neg(eps_c, eps_u, eps_neg, step)
            return eps_u + scale * (eps_c - eps_u)
        with self.timer("prior"):
            if scale == 1.0:
                return self.prior.predict(x_t, t, batch.text.cond, batch.cameras)
            return self.prior.predict_cfg(x_t, t, batch.text, scale, batch.cameras)

    # -- helpers for members: batched predictions, extra text, Perp-Neg --------------------------------------------
    def predictions(self, x_t: torch.Tensor, t: torch.Tensor, conds: Sequence[torch.Tensor],
                    batch: Batch) -> list[torch.Tensor]:
        """[ε̂(x_t; c, t) for c in conds] from one batched prior call (the batch repeated once per condition, each copy
        with ``batch.cameras``, so a multi-view prior's groups stay whole), timed as the "prior" section."""
        k = len(conds)
        if k == 1:
            with self.timer("prior"):
                return [self.prior.predict(x_t, t, conds[0], batch.cameras)]
        cams = Cameras.cat([batch.cameras] * k) if batch.cameras is not None else None
        with self.timer("prior"):
            out = self.prior.predict(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat(list(conds)), cams)
        return list(out.chunk(k))

    def image_prompts(self, batch: Batch, size: int, why: str) -> list[str]:
        """The prompt text of each of the ``size`` images (``batch.text.prompts``); a one-line error naming ``why``
        when the batch carries none."""
        prompts = list(batch.text.prompts or [])
        if len(prompts) != size:
            from ..errors import DreamkitError

            raise DreamkitError(f"{why} needs each image's prompt text, but this batch's text carries "
                                f"{len(prompts)} prompt(s) for {size} image(s) (Batch.text.prompts)")
        return prompts

    def text_embeddings(self, texts: Sequence[str], negative: bool, batch: Batch) -> torch.Tensor:
        """[len(texts), ...] embeddings of ``texts``, one per image, on the batch's device. Each string is encoded by
        the prior once (lazily) and cached: as a prompt (the ``cond`` branch) or, with ``negative``, as a negative
        prompt (the ``uncond`` branch: "" is the truly empty ∅, as the prior encodes an empty negative prompt).
        Warnings about prompts outside a tiny prior's world are silenced: derived prompts are off-caption on
        purpose (the user's prompt was checked before the fit)."""
        cache = self.__dict__.setdefault("_text_cache", {})
        missing = [text for text in dict.fromkeys(texts) if (negative, text) not in cache]
        if missing:
            # a negative needs a prompt to ride along with: the batch's own (the oracle accepts only its labels),
            # else "" (any text encoder takes it)
            carrier = (list(batch.text.prompts or []) or [""])[0]
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if negative:
                    encoded = self.prior.encode_text([carrier] * len(missing), list(missing)).uncond
                else:
                    encoded = self.prior.encode_text(list(missing)).cond
            for text, emb in zip(missing, encoded):
                cache[(negative, text)] = emb
        device = batch.text.cond.device
        return torch.stack([cache[(negative, text)] for text in texts]).to(device, batch.text.cond.dtype)

    def null_cond(self, batch: Batch, size: int) -> torch.Tensor:
        """[size, ...] embeddings of ∅, the truly empty prompt (not the recipe's negative prompt)."""
        return self.text_embeddings([""] * size, True, batch)

    def negative_cond(self, text: Optional[str], batch: Batch, size: int) -> torch.Tensor:
        """[size, ...] embeddings of a member's negative prompt ``text``; None: the recipe's (the batch's uncond)."""
        return batch.text.uncond if text is None else self.text_embeddings([text] * size, True, batch)

    def perp_neg_conds(self, batch: Batch, size: int) -> list[torch.Tensor]:
        """The Perp-Neg negatives' embeddings, one [size, ...] tensor per entry of ``perp_neg_prompts`` (empty when
        off)."""
        templates = list(getattr(self.cfg, "perp_neg_prompts", None) or [])
        if not templates:
            return []
        prompts = None
        conds = []
        for template in templates:
            if "{prompt}" in template:
                if prompts is None:
                    prompts = self.image_prompts(batch, size, f"guidance.perp_neg_prompts ({template!r})")
                texts = [template.replace("{prompt}", p) for p in prompts]
            else:
                texts = [template] * size
            conds.append(self.text_embeddings(texts, False, batch))
        return conds

    def perp_neg(self, eps_pos: torch.Tensor, eps_ref: torch.Tensor, eps_neg: Sequence[torch.Tensor],
                 step: int) -> torch.Tensor:
        """ε̂_pos − Σ_k w_k·perp(ε̂_neg_k − ε̂_ref, ε̂_pos − ε̂_ref) per sample (Perp-Neg); ε̂_pos itself without
        negatives."""
        if not eps_neg:
            return eps_pos
        weights = list(self.cfg.perp_neg_weights)
        e_pos = (eps_pos - eps_ref).flatten(1)
        norm2 = (e_pos * e_pos).sum(1, keepdim=True).clamp_min(1e-12)
        out = eps_pos
        for i, (neg, w) in enumerate(zip(eps_neg, weights)):
            e_neg = (neg - eps_ref).flatten(1)
            perp = e_neg - (e_neg * e_pos).sum(1, keepdim=True) / norm2 * e_pos
            out = out - value_at(w, step, f"guidance.perp_neg_weights[{i}]") * perp.view_as(eps_pos)
        return out

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The bracket r of g = w(t)·r (same shape as x, in x's dtype) and extra diagnostics {name: detached
        tensor}; called under ``torch.no_grad``. x is detached."""
        raise NotImplementedError
