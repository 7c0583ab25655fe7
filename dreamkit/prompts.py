"""The prompt component: the recipe's prompt, negative prompt and view-dependent variants → the conditioning a prior
needs, and which variant each camera of a step gets.

Priors receive plain text and never parse it: a prior says whether its text encoder was trained on view-suffixed
captions (``Prior.view_prompts``; Stable Diffusion was, the tiny world's priors and the oracle were not), and only
then does this component append DreamFusion's "front view" / "side view" / "back view" / "overhead view" (Poole et al.
2022, §3.3) and pick a variant per camera from its elevation and azimuth. ``camera.view_dependent_prompting`` is
``auto`` (on exactly when the prior takes view text), ``true`` (an error for a prior that does not) or ``false``.
Checks a prior makes of the prompt itself (the tiny priors' "outside the world" warning, the oracle's labels) receive
the prompt as the user wrote it (:meth:`Prior.check_prompt`).

A compositional recipe's ``layout`` adds per-region prompts (one per box, :mod:`dreamkit.layout`): encoded once with
the recipe's negative prompt, they reach the guidance as ``Batch.regions`` (K prompts), never as text to parse.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .cameras import VIEW_SUFFIXES, Cameras, view_direction_index
from .errors import ConfigError
from .types import TextCond

VIEW_PROMPTING = ("auto", "true", "false")


def view_prompting_setting(value: Any) -> str:
    """``camera.view_dependent_prompting`` as one of auto | true | false (YAML booleans accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in VIEW_PROMPTING:
        raise ConfigError(f"camera.view_dependent_prompting={value!r} — use auto, true or false")
    return text


class PromptComponent:
    """Encodes the prompt variants once (:meth:`setup`) and selects one per camera each step."""

    def __init__(self, prompt: str, negative: str = "", view_dependent: Any = "auto",
                 front_threshold: float = 45.0, back_threshold: float = 45.0, overhead_threshold: float = 60.0,
                 regions: Optional[list] = None):
        self.prompt = str(prompt).strip()
        self.regions: list[str] = [str(r) for r in (regions or [])]
        self.region_text: Optional[TextCond] = None
        self.negative = str(negative)
        self.view_setting = view_prompting_setting(view_dependent)
        self.thresholds = (float(front_threshold), float(back_threshold), float(overhead_threshold))
        self.variants: list[str] = [self.prompt]
        self.text: Optional[TextCond] = None
        self._zero_index: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg: Any) -> "PromptComponent":
        from .layout import resolve_layout

        cam = cfg.camera
        return cls(cfg.prompt, cfg.negative_prompt, cam.view_dependent_prompting, cam.front_threshold,
                   cam.back_threshold, cam.overhead_threshold, regions=[b.prompt for b in resolve_layout(cfg)])

    def uses_view_variants(self, prior: Any) -> bool:
        takes = bool(getattr(prior, "view_prompts", True))
        if self.view_setting == "true" and not takes:
            raise ConfigError(f"camera.view_dependent_prompting=true, but the {type(prior).__name__} was not trained "
                              "on view-suffixed prompts (\"…, front view\") — set it to auto or false")
        return takes if self.view_setting == "auto" else self.view_setting == "true"

    def check(self, prior: Any) -> None:
        """The prior's own checks of the prompt (raises for a prompt it cannot express), before any work."""
        prior.check_prompt(self.prompt, self.negative)
        for region in self.regions:
            prior.check_prompt(region, self.negative)

    @torch.no_grad()
    def setup(self, prior: Any, device: torch.device) -> TextCond:
        """Encode the variants with ``prior`` on ``device``; returns the TextCond of all P variants."""
        if self.uses_view_variants(prior):
            self.variants = [f"{self.prompt}, {suffix}" for suffix in VIEW_SUFFIXES]
        else:
            self.variants = [self.prompt]
        self.text = prior.encode_text(self.variants, [self.negative] * len(self.variants)).to(device)
        if self.regions:
            self.region_text = prior.encode_text(self.regions, [self.negative] * len(self.regions)).to(device)
        return self.text

    def variant_index(self, cameras: Cameras) -> Optional[torch.Tensor]:
        """[B] host index of each camera's variant, or None when there is a single variant."""
        if len(self.variants) == 1:
            return None
        return view_direction_index(cameras.elevation.cpu(), cameras.azimuth.cpu(), *self.thresholds)

    def select(self, index: Optional[torch.Tensor], batch: int, prompts: Optional[list] = None) -> TextCond:
        """One variant per camera, gathered with a device-side ``index`` (no host read-back); ``prompts``: the text of
        each image's variant as the host drew it (``TextCond.prompts``, which losses that build prompts of their own
        need, e.g. SDS-Bridge; None: the first variant for every camera, right when ``index`` is None)."""
        cond = self.text
        if cond is None:
            raise RuntimeError("PromptComponent.setup(prior, device) must run before select")
        if index is None:
            if self._zero_index is None or self._zero_index.shape[0] != batch \
                    or self._zero_index.device != cond.cond.device:
                self._zero_index = torch.zeros(batch, dtype=torch.long, device=cond.cond.device)
            index = self._zero_index
        return TextCond(cond.cond.index_select(0, index), cond.uncond.index_select(0, index),
                        list(prompts) if prompts is not None else self.prompts_for(None, batch))

    def prompts_for(self, index: Optional[torch.Tensor], batch: int) -> list[str]:
        """The variant text of each camera (host; for logs and tests)."""
        if index is None:
            return [self.variants[0]] * batch
        return [self.variants[i] for i in index.tolist()]
