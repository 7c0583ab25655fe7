"""Composed guidance: several score-distillation members, each with its own prior and batch layout, one of them per
step — the hybrid schedules of 4D-fy (Bahmani et al. 2024: multi-view SDS at one random time, video SDS on clips,
image SDS at random single frames, each with a probability) and Align Your Gaussians (Ling et al. 2024: text-to-image,
multi-view and video SDS together).

    guidance:
      name: composed
      members:
        image:                       # a member's name names its loss terms: loss_image_sds → loss.lambda_image_sds
          probability: 0.5           # chance that a step is this member's (the probabilities add up to 1)
          guidance: {name: sds, guidance_scale: 7.5}
          # prior: omitted → the recipe's prior; or a whole prior section (type: pixel, name: tiny-t2i, ...)
          # camera: omitted → the recipe's camera; or keys to change (frames, views, batch_size, time_range, ...)
          # prompt: omitted → the recipe's prompt; or a template of {prompt} (the recipe's prompt) and {object} (the
          #   prompt less a trailing motion of the tiny world's vocabulary: "a red cube bouncing" → "a red cube"),
          #   for an image prior that was never told about motion
        video:
          probability: 0.5
          guidance: {name: sds, guidance_scale: 7.5, motion_amp: 10}
          prior: {type: pixel, name: tiny-video}
          camera: {frames: 8, batch_size: 8}
          translation: viewer        # the object's translation drawn in each clip camera's frame (below)

Each step the system draws the member (from its camera generator: checkpointed, so a resumed run repeats the draws),
then that member's cameras in its layout (its ``camera`` over the recipe's), its text encoded by its own prior, and
the member's loss. A member's loss terms are prefixed with its name (``loss_video_sds``); the recipe's
``loss.lambda_<member>_<term>`` weight them (all 1 by default). Trainable parts of a member (VSD's φ) are its own
and are checkpointed with the run.

``translation`` (a member of a time-varying representation): where that member's renders draw the object's
translation (:meth:`dreamkit.representations.deformable.DeformableGaussianModel.render`): ``world`` (default) as it
is; ``viewer`` turned by each camera's azimuth — a video prior without a camera input learnt "moving right" as the
viewer's right at one depth (the tiny world's clips are drawn so), while a fit moves in the world's frame, and seen
from azimuth 30° a translation along +X also comes towards the camera, which such a prior reads as a wrong motion
(``scripts/video_force_at_truth.py``); ``removed``: taken away, so that an image prior of centred, still objects
judges the object's shape at any time, not where its motion has taken it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..batch import Batch, BatchSampler, Layout
from ..errors import ConfigError
from ..representations.deformable import TRANSLATIONS  # where a member's renders may draw the object's translation
from ..types import RenderOutput

__all__ = ["ComposedConfig", "ComposedGuidance", "member_prompt", "object_text"]

MEMBER_KEYS = ("probability", "guidance", "prior", "camera", "prompt", "translation")
#: the fields a member's prompt template may name
PROMPT_FIELDS = ("prompt", "object")


@dataclass
class ComposedConfig:
    name: str = "composed"
    #: name → {probability, guidance: {name, ...}, prior: {type, ...} (optional), camera: {...} (optional)}
    members: Dict[str, Any] = field(default_factory=dict)


def _member_sections(cfg: DictConfig) -> dict[str, dict]:
    members = OmegaConf.to_container(cfg.guidance.members, resolve=True) or {}
    if not members:
        raise ConfigError("guidance.name=composed needs guidance.members: {name: {probability, guidance: {name: sds, "
                          "...}, prior (optional), camera (optional)}, ...}")
    for name, spec in members.items():
        if not str(name).isidentifier():
            raise ConfigError(f"guidance.members.{name}: a member's name must be a plain identifier (it names its "
                              "loss terms, loss.lambda_<member>_<term>)")
        if not isinstance(spec, dict):
            raise ConfigError(f"guidance.members.{name} must be a mapping with {', '.join(MEMBER_KEYS)}")
        unknown = set(spec) - set(MEMBER_KEYS)
        if unknown:
            import difflib

            bad = sorted(unknown)[0]
            close = difflib.get_close_matches(bad, MEMBER_KEYS, n=1)
            raise ConfigError(f"guidance.members.{name}.{bad}: unknown key — "
                              + (f"did you mean {close[0]}? " if close else "") + f"keys: {', '.join(MEMBER_KEYS)}")
        if not isinstance(spec.get("guidance"), dict) or "name" not in spec["guidance"]:
            raise ConfigError(f"guidance.members.{name}.guidance must be a guidance section with a name (sds, vsd, "
                              "...)")
        if spec["guidance"]["name"] == "composed":
            raise ConfigError(f"guidance.members.{name}: a member cannot itself be composed")
        if spec.get("prompt") is not None:
            _check_template(spec["prompt"], f"guidance.members.{name}.prompt")
    return members


def _check_template(template: Any, where: str) -> None:
    import string

    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{where}={template!r} — give a prompt template such as \"{{object}}\" or "
                          "\"{prompt}, a photo\"")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ConfigError(f"{where}={template!r}: {err} — write literal braces as {{{{ and }}}}") from None
    for f in fields:
        if f not in PROMPT_FIELDS:
            raise ConfigError(f"{where}={template!r}: unknown field {{{f}}} — a member's prompt may name "
                              + ", ".join("{" + x + "}" for x in PROMPT_FIELDS))


def object_text(prompt: str) -> str:
    """The prompt less a trailing motion of the tiny world's vocabulary (:data:`dreamkit.world.motion.MOTIONS`),
    its case kept: "A red cube bouncing" → "A red cube"; a prompt without one is returned unchanged."""
    from ..world.motion import split_motion_caption

    text = " ".join(prompt.split()).rstrip(" .,;")
    _, motion = split_motion_caption(text)
    if motion.name == "still" and not text.lower().endswith(" still"):
        return text
    return text[: len(text) - len(motion.name)].rstrip(" ,")


def member_prompt(template: Optional[str], prompt: str) -> str:
    """A member's prompt: the recipe's ``prompt`` through the member's template (None: the prompt itself)."""
    if template is None:
        return prompt
    return template.format(prompt=prompt, object=object_text(prompt)).strip()


def resolve_config(cfg: DictConfig) -> None:
    """Validate every member's sections against their schemas (strict, as the recipe's own sections) and write the
    resolved sections back; the probabilities must add up to 1."""
    from ..config import CameraConfig, merge_structured
    from ..registry import component_config_class

    members = _member_sections(cfg)
    total = 0.0
    resolved = {}
    for name, spec in members.items():
        where = f"guidance.members.{name}"
        p = spec.get("probability", None)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ConfigError(f"{where}.probability={p!r} — give each member a probability in [0, 1]")
        total += float(p)
        g_cls = component_config_class("guidance", spec["guidance"]["name"], key=f"{where}.guidance.name")
        out = {"probability": float(p),
               "guidance": OmegaConf.to_container(merge_structured(g_cls, spec["guidance"],
                                                                   prefix=f"{where}.guidance"))}
        if spec.get("prior") is not None:
            prior = spec["prior"]
            p_cls = component_config_class("prior", prior.get("type"), key=f"{where}.prior.type")
            out["prior"] = OmegaConf.to_container(merge_structured(p_cls, prior, prefix=f"{where}.prior"))
        if spec.get("prompt") is not None:
            out["prompt"] = spec["prompt"]
        if spec.get("translation") is not None:
            if spec["translation"] not in TRANSLATIONS:
                raise ConfigError(f"{where}.translation={spec['translation']!r} — give one of "
                                  f"{', '.join(TRANSLATIONS)}")
            out["translation"] = spec["translation"]
        camera = OmegaConf.merge(cfg.camera, spec.get("camera") or {})
        out["camera"] = OmegaConf.to_container(merge_structured(CameraConfig, OmegaConf.to_container(camera),
                                                                prefix=f"{where}.camera"))
        resolved[name] = out
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"guidance.members: the probabilities add up to {total:g} — make them add up to 1")
    cfg.guidance.members = resolved


def default_loss_names(cfg: DictConfig) -> list[str]:
    """``<member>_<term>`` for every member and term of its guidance (the recipe's default lambdas)."""
    from ..registry import component_class

    names = []
    for name, spec in _member_sections(cfg).items():
        cls = component_class("guidance", spec["guidance"]["name"], f"guidance.members.{name}.guidance.name")
        names += [f"{name}_{term}" for term in getattr(cls, "loss_names", (spec["guidance"]["name"],))]
    return names


class _Member:
    """One member: its guidance, prior, prompt encodings, camera sampler and layout."""

    def __init__(self, name: str, spec: dict, recipe: DictConfig, main_prior: Any, max_steps: int,
                 camera_gen: torch.Generator):
        from ..priors.configs import build_prior
        from ..prompts import PromptComponent
        from ..registry import component_class

        self.name = name
        self.probability = float(spec["probability"])
        self.translation = str(spec.get("translation", "world"))
        if spec.get("prior") is not None:
            prior_cfg = OmegaConf.create(spec["prior"])
            param = next(iter(main_prior.buffers()), None)
            self.prior = build_prior(prior_cfg, param.device if param is not None else torch.device("cpu"))
        else:
            self.prior = main_prior
        self.camera = OmegaConf.create(spec["camera"])
        views, frames = int(getattr(self.prior, "views", 1) or 1), int(getattr(self.prior, "frames", 1) or 1)
        where = f"guidance.members.{name}.camera"
        if int(self.camera.views) != views:
            raise ConfigError(f"{where}.views={self.camera.views} but this member's prior denoises groups of {views} "
                              f"view(s) — set {where}.views={views}")
        if frames > 1 and int(self.camera.frames) != frames or frames == 1 and int(self.camera.frames) != 1:
            raise ConfigError(f"{where}.frames={self.camera.frames} but this member's prior denoises "
                              f"{frames} frame(s) at a time — set {where}.frames={frames}")
        self.layout = Layout(views=views, frames=int(self.camera.frames),
                             particles=int(recipe.get("particles", 1) or 1))
        self.sampler = BatchSampler(self.camera, self.layout, camera_gen, None)
        self.prompt = member_prompt(spec.get("prompt"), str(recipe.prompt))
        if not self.prompt:
            raise ConfigError(f"guidance.members.{name}.prompt={spec.get('prompt')!r} leaves nothing of the prompt "
                              f"{str(recipe.prompt)!r} — give the object before its motion (\"a red cube bouncing\")")
        self.prompts = PromptComponent(self.prompt, recipe.negative_prompt, self.camera.view_dependent_prompting,
                                       self.camera.front_threshold, self.camera.back_threshold,
                                       self.camera.overhead_threshold)
        self.prompts.uses_view_variants(self.prior)
        self.prompts.check(self.prior)
        self.sampler.prompts = self.prompts
        guidance_cfg = OmegaConf.create(spec["guidance"])
        cls = component_class("guidance", guidance_cfg.name, f"guidance.members.{name}.guidance.name")
        self.guidance = cls(guidance_cfg, self.prior, max_steps)


class ComposedGuidance(nn.Module):
    """See the module docstring. Built by the system with the whole recipe (:meth:`from_recipe`)."""

    loss_name = "composed"
    loss_names: tuple[str, ...] = ()

    def __init__(self, recipe: DictConfig, prior: Any, max_steps: int, camera_gen: torch.Generator):
        super().__init__()
        self.cfg = recipe.guidance
        members = OmegaConf.to_container(recipe.guidance.members, resolve=True)
        self.members = [_Member(name, spec, recipe, prior, max_steps, camera_gen) for name, spec in members.items()]
        # trainable parts of the members (VSD's φ) are checkpointed under guidance_module.parts.<member>
        self.parts = nn.ModuleDict({m.name: m.guidance for m in self.members})
        self.loss_names = tuple(f"{m.name}_{term}" for m in self.members
                                for term in getattr(m.guidance, "loss_names", (m.guidance.loss_name,)))
        self.update_every = 1
        cumulative, total = [], 0.0
        for m in self.members:
            total += m.probability
            cumulative.append(total)
        self.cumulative = cumulative
        self.camera_gen = camera_gen
        object.__setattr__(self, "timer", None)

    @classmethod
    def from_recipe(cls, recipe: DictConfig, prior: Any, max_steps: int, camera_gen: torch.Generator):
        return cls(recipe, prior, max_steps, camera_gen)

    @staticmethod
    def resolve_config(cfg: DictConfig) -> None:
        resolve_config(cfg)

    @staticmethod
    def default_loss_names(cfg: DictConfig) -> list[str]:
        return default_loss_names(cfg)

    # -- the system's hooks ------------------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        """Move the members' own priors to ``device`` and encode each member's prompt with its prior."""
        for m in self.members:
            m.prior.to(device)
            m.prompts.setup(m.prior, device)

    def choose(self, step: int) -> int:
        """The member of this step, drawn from the camera generator (host; saved in checkpoints); a single member
        draws nothing (so it repeats the same guidance uncomposed exactly)."""
        if len(self.members) == 1:
            return 0
        u = float(torch.rand((), generator=self.camera_gen))
        for i, edge in enumerate(self.cumulative):
            if u < edge:
                return i
        return len(self.members) - 1

    def sample_batch(self, step: int, to_device) -> Batch:
        """Draw the member and its batch; ``to_device(host_batch)`` → (cameras, prompt index) on the device."""
        index = self.choose(step)
        m = self.members[index]
        host = m.sampler.sample(step)
        cameras, prompt_index = to_device(host)
        return Batch(cameras, m.prompts.select(prompt_index, len(cameras), host.prompts), m.layout, prompt_index,
                     member=index)

    def parameter_groups(self) -> list[dict]:
        groups = []
        for m in self.members:
            for g in m.guidance.parameter_groups():
                groups.append(dict(g, name=f"{m.name}.{g.get('name', 'params')}"))
        return groups

    def render_options(self, step: int, batch: Batch) -> dict:
        m = self.members[batch.member]
        options = m.guidance.render_options(step, batch)
        return options if m.translation == "world" else {**options, "translation": m.translation}

    def check_representation(self, representation: Any) -> None:
        """A clear error when a member asks for a ``translation`` the representation cannot draw."""
        for m in self.members:
            if m.translation != "world" and not getattr(representation, "renders_translation", False):
                raise ConfigError(f"guidance.members.{m.name}.translation={m.translation} needs a representation "
                                  f"that moves (deformable_gaussians); {type(representation).__name__} has no "
                                  f"translation to draw otherwise — remove guidance.members.{m.name}.translation")

    def forward(self, out: RenderOutput, batch: Batch, step: int,
                generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        m = self.members[batch.member]
        terms = m.guidance(out, batch, step, generator=generator)
        renamed = {}
        for key, value in terms.items():
            if key.startswith("loss_"):
                renamed[f"loss_{m.name}_{key[len('loss_'):]}"] = value
            else:
                renamed[f"{m.name}_{key}"] = value
        renamed["member"] = torch.tensor(float(batch.member))
        return renamed
