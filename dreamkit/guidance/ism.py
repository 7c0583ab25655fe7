"""Interval score matching (ISM), LucidDreamer (Liang et al., CVPR 2024).

ISM replaces SDS's noise ε by the prior's own prediction one interval earlier on a deterministic (DDIM, η = 0)
inversion trajectory of the render:

    g_ISM = w(t) · ( ε̂_s(x_t; y, t) − ε̂(x_s; ∅, s) ),    s = t − δ_T,    w(t) = σ_t / α_t = sqrt((1 − ᾱ_t) / ᾱ_t)

* x_s: DDIM inversion of x from index k₀ = max(s − ``xs_delta_t``·``xs_inv_steps``, 0) (where the start point is
  α_k₀·x + σ_k₀·ε, at k₀ = 0 almost exactly x) to s, in strides of ``xs_delta_t`` (200), with the **unconditional**
  prediction ε̂(·; ∅) of the empty prompt "" (LucidDreamer's ``inverse_text`` with ``denoise_guidance_scale`` 1);
* x_t: ONE inversion step s → t with ε̂(x_s; ∅, s), which is also the target;
* a DDIM inversion step a → b: x̂₀ = (x_a − σ_a·ε̂)/α_a, x_b = α_b·x̂₀ + σ_b·ε̂;
* δ_T = ``delta_t`` + r·(``delta_t_start`` − ``delta_t``), r = 1 − min(step / ``warmup_steps``, 1), truncated to an
  integer (100 → 80 over 1500 steps; ``configs/axe.yaml`` of LucidDreamer goes 100 → 25). s is clamped at 0.

ε̂_s is the base's classifier-free guidance (the recipe's uncond, Perp-Neg when configured) at the **inverted** x_t.
The x_t that :class:`~dreamkit.guidance.base.ScoreDistillation` computes (α_t·x + σ_t·ε) is not used: ISM builds its
own from x inside :meth:`ISMGuidance.residual`; the base's ε enters only through the start point α_k₀·x + σ_k₀·ε.

Weighting: ``weighting: ism`` (the default here) is w(t) = σ_t/α_t; the base's sds | uniform | fantasia3d stay valid.
Reference defaults (LucidDreamer ``arguments/__init__.py``, ``configs/*.yaml``; SD 2.1-base, 512², 4 views, 5000
iterations): s = 7.5, t ∈ [0.02, 0.98 → 0.5 over the 1500 warm-up iterations] (``max_step_percent:
[0, 0.98, 0.5, 1500]`` here), δ_T 100 → 80, xs_delta_t 200, xs_inv_steps 5, grad scale ``lambda_guidance`` 0.1 (here
``loss.lambda_ism``).

Clean version of the reference (``guidance/sd_utils.py::StableDiffusion.train_step``), each noted:

* offset noise: the reference adds 0.1·ε' (ε' ~ N(0, I) of shape [1, C, 1, 1], shared by the batch) to ε. Here
  ``offset_noise`` defaults to 0: the draw would break the contract that ``distill(noise=...)`` fixes every random
  number (common random numbers in ablations), and since ε enters ISM only at index k₀ = 0 (σ_0 ≈ 0.03 for SD, 0.006
  for the tiny priors) its effect is negligible; set ``offset_noise: 0.1`` for the reference's draw;
* the reference stops its inversion loop as soon as it reaches s (a host-side ``break``); here every sample runs
  ``xs_inv_steps`` iterations and the samples that already reached s stay put (a mask), so nothing reads the device
  back; the prior is still always called on whole batches (multi-view groups intact, ``batch.cameras`` passed);
* ``denoise_guidance_scale`` > 1 (a "reverse CFG" inversion of the reference) is not built: the inversion is
  unconditional, as in every shipped LucidDreamer config.

Exact properties (tests/test_guidance_family.py): with a prior whose ε̂ ≡ 0 the inversion gives x_t = (α_t/α_s)·x_s
exactly; for the point-mass prior ε̂(x_τ) = (x_τ − α_τ·R)/σ_τ at x = R, ε̂ stays the starting ε along the whole
inversion and g = 0; w(t)/(1 − ᾱ_t) = 1/(α_t·σ_t); the gradient on a 2×2 image against the inversion worked by hand.
"""

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..config import sched
from ..errors import ConfigError
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["ISMConfig", "ISMGuidance", "ddim_step"]


def ddim_step(x_a: torch.Tensor, eps: torch.Tensor, abar_a: torch.Tensor, abar_b: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from noise level a to b (b > a inverts): x̂₀ = (x_a − σ_a·ε̂)/α_a,
    x_b = α_b·x̂₀ + σ_b·ε̂; ᾱ_a, ᾱ_b broadcast against x_a."""
    x0 = (x_a - (1 - abar_a).sqrt() * eps) / abar_a.sqrt()
    return abar_b.sqrt() * x0 + (1 - abar_b).sqrt() * eps


@dataclass
class ISMConfig(ScoreDistillationConfig):
    name: str = "ism"
    guidance_scale: Any = sched(7.5)
    max_step_percent: Any = sched([0, 0.98, 0.5, 1500])
    #: w(t): ism (σ_t/α_t, LucidDreamer) | sds | uniform | fantasia3d
    weighting: str = "ism"
    #: δ_T after the warm-up (s = t − δ_T; LucidDreamer's code default 80)
    delta_t: int = 80
    #: δ_T at step 0, linear to delta_t over warmup_steps (LucidDreamer 100)
    delta_t_start: int = 100
    #: steps of the δ_T warm-up (LucidDreamer's 1500 warm-up iterations; 0 = delta_t from the start)
    warmup_steps: int = 1500
    #: stride of the DDIM inversion x → x_s (LucidDreamer xs_delta_t 200)
    xs_delta_t: int = 200
    #: inversion steps x → x_s at most; it starts at max(s − xs_delta_t·xs_inv_steps, 0) (LucidDreamer 5)
    xs_inv_steps: int = 5
    #: ε + c·ε' with ε' ~ N(0, I) of shape [1, C, 1, 1] (offset noise; LucidDreamer 0.1; 0 = off, see the module notes)
    offset_noise: float = 0.0


class ISMGuidance(ScoreDistillation):
    """ISM loss (``loss_ism``); logs ``ism_delta_t`` (δ_T) and ``ism_s`` (mean s)."""

    loss_name = "ism"
    loss_names = ("ism",)
    extra_weightings = {"ism": lambda abar: ((1 - abar) / abar).sqrt()}

    def __init__(self, cfg: Any, prior, max_steps: int):
        super().__init__(cfg, prior, max_steps)
        for key, low in (("delta_t", 0), ("delta_t_start", 0), ("warmup_steps", 0), ("xs_delta_t", 1),
                         ("xs_inv_steps", 1)):
            if int(getattr(cfg, key)) < low:
                raise ConfigError(f"guidance.{key}={getattr(cfg, key)} must be ≥ {low}")
        if not float(cfg.offset_noise) >= 0:
            raise ConfigError(f"guidance.offset_noise={cfg.offset_noise} must be ≥ 0 (LucidDreamer uses 0.1)")

    def interval(self, step: int) -> int:
        """δ_T at ``step``: delta_t_start → delta_t linearly over warmup_steps, truncated to an integer."""
        cfg = self.cfg
        warm = int(cfg.warmup_steps)
        r = 1.0 - min(step / warm, 1.0) if warm > 0 else 0.0
        return int(int(cfg.delta_t) + r * (int(cfg.delta_t_start) - int(cfg.delta_t)))

    def invert(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
               step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_s, x_t, ε̂(x_s; ∅, s), s): the DDIM inversion of x (detached) to s = max(t − δ_T, 0) with the
        unconditional prediction, then one step s → t."""
        abar = self.prior.alphas_cumprod.to(x.device)
        shape = (-1,) + (1,) * (x.dim() - 1)

        def level(k: torch.Tensor) -> torch.Tensor:
            return abar[k].view(shape)

        s = (t - self.interval(step)).clamp_min(0)
        stride, steps = int(self.cfg.xs_delta_t), int(self.cfg.xs_inv_steps)
        cur = (s - stride * steps).clamp_min(0)
        null = self.null_cond(batch, x.shape[0])  # ∅: the empty prompt, not the recipe's negative
        x_cur = level(cur).sqrt() * x + (1 - level(cur)).sqrt() * noise
        for _ in range(steps):
            eps = self.predictions(x_cur, cur, [null], batch)[0].to(x_cur.dtype)
            nxt = torch.minimum(cur + stride, s)
            x_cur = torch.where((cur < s).view(shape), ddim_step(x_cur, eps, level(cur), level(nxt)), x_cur)
            cur = nxt
        eps_s = self.predictions(x_cur, s, [null], batch)[0].to(x_cur.dtype)
        x_t = ddim_step(x_cur, eps_s, level(s), level(t))
        return x_cur, x_t, eps_s, s

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        # the base's x_t (α_t·x + σ_t·ε) is not used: ISM's x_t is the DDIM inversion of x
        offset = float(self.cfg.offset_noise)
        if offset > 0:
            shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            noise = noise + offset * torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        _, x_t, target, s = self.invert(x, t, noise, batch, step)
        eps = self.guided_prediction(x_t, t, batch, step)
        extra = {"delta_t": torch.full((), float(self.interval(step)), device=x.device),
                 "s": s.float().mean()}
        return (eps.to(x.dtype) - target.to(x.dtype)), extra
