"""The step contracts: a sampler's Batch with its layout, the prompt component, guidance on RenderOutput + Batch,
one optimizer per component on its own cadence, the registered densification strategy."""
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, BatchSampler, Layout
from dreamkit.cameras import VIEW_SUFFIXES, cameras_from_spherical
from dreamkit.config import CameraConfig
from dreamkit.errors import ConfigError
from dreamkit.prompts import PromptComponent
from dreamkit.types import RenderOutput, TextCond


def test_layout_groups_and_repeats():
    layout = Layout(views=2, frames=3)
    assert layout.group_size == 6 and layout.groups(12) == 2
    assert layout.per_image(torch.tensor([7, 9])).tolist() == [7] * 6 + [9] * 6
    with pytest.raises(ValueError, match="whole number of groups"):
        layout.groups(8)
    with pytest.raises(ValueError):
        Layout(views=0)

    class Prior:
        views, frames = 4, 1

    assert Layout.of_prior(Prior()) == Layout(4, 1)


def test_sampler_draws_groups_of_views_and_rejects_partial_groups():
    cfg = OmegaConf.structured(CameraConfig(batch_size=8, views=4))
    sampler = BatchSampler(cfg, Layout(views=4), torch.Generator().manual_seed(0))
    host = sampler.sample(0)
    az = host.cameras.azimuth.view(2, 4)
    steps = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0))
    assert host.prompt_index is None
    with pytest.raises(ConfigError, match="multiple of the group size 4"):
        BatchSampler(OmegaConf.structured(CameraConfig(batch_size=6)), Layout(views=4), torch.Generator())


class RecordingPrior:
    """Records the texts it is asked to encode (a prior never parses them)."""

    def __init__(self, view_prompts: bool):
        self.view_prompts = view_prompts
        self.seen: list[str] = []

    def encode_text(self, prompts, negative=None):
        self.seen += list(prompts)
        return TextCond(torch.arange(len(prompts)).float()[:, None], torch.zeros(len(prompts), 1), list(prompts))


def test_prompt_component_appends_view_text_only_for_priors_that_take_it():
    front_back = cameras_from_spherical(torch.tensor([0.0, 0.0, 80.0]), torch.tensor([0.0, 180.0, 0.0]),
                                        torch.full((3,), 2.5), torch.full((3,), 40.0), 8, 8)
    sd_like = RecordingPrior(view_prompts=True)
    component = PromptComponent("a red cube", view_dependent="auto")
    component.setup(sd_like, torch.device("cpu"))
    assert sd_like.seen == [f"a red cube, {s}" for s in VIEW_SUFFIXES]
    index = component.variant_index(front_back)
    assert component.prompts_for(index, 3) == ["a red cube, front view", "a red cube, back view",
                                               "a red cube, overhead view"]
    assert component.select(index, 3).cond[:, 0].tolist() == [0.0, 2.0, 3.0]

    tiny_like = RecordingPrior(view_prompts=False)
    component = PromptComponent("a red cube", view_dependent="auto")
    component.setup(tiny_like, torch.device("cpu"))
    assert tiny_like.seen == ["a red cube"] and component.variant_index(front_back) is None
    assert component.select(None, 3).cond.shape == (3, 1)
    with pytest.raises(ConfigError, match="not trained on view-suffixed prompts"):
        PromptComponent("a red cube", view_dependent=True).uses_view_variants(tiny_like)
    off = PromptComponent("a red cube", view_dependent="false")
    off.setup(sd_like, torch.device("cpu"))
    assert off.variants == ["a red cube"]
    with pytest.raises(ConfigError, match="auto, true or false"):
        PromptComponent("a red cube", view_dependent="sometimes")


def test_view_prompting_setting_is_checked_before_any_work():
    from dreamkit.config import load_config

    with pytest.raises(ConfigError, match="view_dependent_prompting"):
        load_config("gs_oracle.yaml", ["camera.view_dependent_prompting=maybe"])


def test_guidance_receives_the_render_output_and_the_batch():
    """forward(RenderOutput, Batch) is distill on the channels-first colour, with the batch's layout."""
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance
    from test_sds import AffinePrior

    g = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=1.0)), AffinePrior(), max_steps=10)
    rgb = torch.rand(2, 8, 8, 3)
    out = RenderOutput(rgb=rgb, alpha=torch.ones(2, 8, 8, 1), depth=torch.ones(2, 8, 8, 1))
    batch = Batch(None, g.prior.encode_text(["p", "p"]))
    a = g(out, batch, 0, generator=torch.Generator().manual_seed(3))
    b = g.distill(rgb.permute(0, 3, 1, 2), batch, 0, generator=torch.Generator().manual_seed(3))
    assert float(a["loss_sds"]) == float(b["loss_sds"])
    # the layout decides the timestep groups
    t = g.sample_timesteps(8, 0, torch.Generator().manual_seed(0), torch.device("cpu"), Layout(views=2, frames=2))
    assert all(len(set(group.tolist())) == 1 for group in t.view(2, 4))


def _system(recipe: str, overrides: list[str]):
    from test_bench import _small_system

    return _small_system(recipe, "cpu", overrides)


def test_each_component_owns_its_optimizer_and_phi_keeps_its_cadence(monkeypatch):
    """gs_vsd: the representation's Adam and φ's; φ trains every guidance.lora_every steps; densification gets the
    representation's optimizer only."""
    system, optimizers = _system("gs_vsd", ["guidance.lora_every=2", "representation.densify.refine_start=1",
                                            "representation.densify.refine_every=1"])
    assert isinstance(optimizers, list) and len(optimizers) == 2
    rep_params = {id(p) for p in system.representation.parameters()}
    phi_params = {id(p) for p in system.guidance.phi.adapters.values()}
    assert {id(p) for g in optimizers[0].param_groups for p in g["params"]} == rep_params
    assert {id(p) for g in optimizers[1].param_groups for p in g["params"]} == phi_params
    assert [g["lr"] for g in optimizers[1].param_groups] == [0.001]  # gs_vsd's lr_lora

    seen = []
    original = system.representation.post_step

    def spy(step, out, optimizer, cameras, generator=None):
        seen.append(optimizer)
        return original(step, out, optimizer, cameras, generator=generator)

    monkeypatch.setattr(system.representation, "post_step", spy)

    def phi_state():
        return {k: v.detach().clone() for k, v in system.guidance.phi.adapters.items()}

    for step in range(4):
        before = phi_state()
        result = system.optimization_step(step, optimizers)
        after = phi_state()
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert ("loss_lora" in result.terms) == (step % 2 == 0)
        assert changed == (step % 2 == 0), step
    assert all(opt is optimizers[0] for opt in seen)


def test_densification_strategy_comes_from_the_registry():
    from dreamkit.config import load_config
    from dreamkit.registry import component_class
    from dreamkit.representations.gaussian_strategy import DensifyStrategy

    assert component_class("strategy", "adc") is DensifyStrategy
    cfg = load_config("gs_oracle.yaml", ["representation.densify.strategy=adcc"])
    from dreamkit.components import build_representation

    with pytest.raises(ConfigError, match="adc"):
        build_representation(cfg, torch.Generator().manual_seed(0))


def test_gs_vsd_resumes_to_the_uninterrupted_result(tmp_path):
    """Two optimizers (the representation's and φ's) and φ's adapters come back from a checkpoint: 6 steps + a resume
    to 12 equal 12 steps straight."""
    from dreamkit.checkpoint import load_checkpoint
    from dreamkit.cli import main

    common = ["--no-export", "--config", "gs_vsd.yaml", "trainer.val_every=0", "trainer.progress=false",
              "representation.num_points=400", "camera.width=32", "camera.height=32",
              "representation.densify.refine_start=3", "representation.densify.refine_every=4"]
    assert main(["fit", *common, "trainer.max_steps=12", f"output_dir={tmp_path / 'a'}"]) == 0
    assert main(["fit", *common, "trainer.max_steps=6", f"output_dir={tmp_path / 'b'}"]) == 0
    (run_b,) = [p for p in (tmp_path / "b" / "gs_vsd").iterdir() if not p.is_symlink()]
    assert main(["fit", f"resume={run_b}", "trainer.max_steps=12", "trainer.progress=false"]) == 0
    (run_a,) = [p for p in (tmp_path / "a" / "gs_vsd").iterdir() if not p.is_symlink()]
    a = load_checkpoint(run_a / "ckpts" / "last.ckpt")
    b = load_checkpoint(run_b / "ckpts" / "last.ckpt")
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=1e-5, msg=key)
