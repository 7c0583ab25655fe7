"""Compositional (semantic) SDS: the layout, Gaussians with groups, the masked mix of prompts against the formula
worked by hand and the exact properties of the reference notes (§4.1), the object-then-scene alternation, and the
per-part score of a composition."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch
from dreamkit.config import load_config
from dreamkit.errors import ConfigError
from dreamkit.guidance.sds import SDSConfig, SDSGuidance
from dreamkit.guidance.semantic import (SemanticSDSConfig, SemanticSDSGuidance, combine_region_residuals,
                                        semantic_masks)
from dreamkit.layout import LayoutBox, auto_layout, containment_penalty, group_of_points, resolve_layout
from dreamkit.types import RenderOutput

from test_guidance_family import TextPrior

# ------------------------------------------------------------------------------------------------------- the layout


def test_auto_layout_puts_the_parts_where_the_caption_says_and_around_the_truth():
    from dreamkit.world.captions import parse_prompt
    from dreamkit.world.scenes import _scene_parts

    for prompt, axis in (("a red cube on top of a blue sphere", 1), ("a green cone next to a yellow torus", 0)):
        boxes = auto_layout(prompt)
        scene = parse_prompt(prompt)
        assert [parse_prompt(b.prompt).shapes for b in boxes] == [(s,) for s in scene.shapes]
        # A is above B (on top of: +y) / left of B (next to: −x), as the world places them
        sign = 1 if axis == 1 else -1
        assert sign * (boxes[0].centre[axis] - boxes[1].centre[axis]) > 0
        # each truth part's centre lies in its own box (the layout knows the arrangement, not the sizes)
        parts = _scene_parts(parse_prompt(prompt))
        centres = torch.tensor(np.stack([(p.vertices.min(0) + p.vertices.max(0)) / 2 for p in parts]),
                               dtype=torch.float32)
        assert group_of_points(centres, boxes).tolist() == [0, 1]
    assert [b.prompt for b in auto_layout("a red cube on top of a blue sphere")] == ["a red cube", "a blue sphere"]


def test_layout_errors_name_the_problem_and_the_fix():
    with pytest.raises(ConfigError, match="composition caption"):
        auto_layout("a red cube")
    cfg = OmegaConf.create({"prompt": "x", "layout": [{"prompt": "a", "box_min": [0, 0, 0], "box_max": [1, -1, 1]}]})
    with pytest.raises(ConfigError, match=r"layout\[0\].*below box_max"):
        resolve_layout(cfg)
    cfg = OmegaConf.create({"prompt": "x", "layout": [{"prompt": "a", "box_min": [0, 0], "box_max": [1, 1, 1]}]})
    with pytest.raises(ConfigError, match=r"layout\[0\].box_min must be three numbers"):
        resolve_layout(cfg)
    cfg = OmegaConf.create({"prompt": "x", "layout": [{"prompt": "a", "box_min": [0, 0, 0], "box_max": [1, 1, 1],
                                                       "colour": "red"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_layout(cfg)
    with pytest.raises(ConfigError, match="layout=auto"):
        load_config("gs_semantic.yaml", ["prompt=a red cube"])


def test_containment_penalty_by_hand():
    boxes = [LayoutBox("a", (-1, -1, -1), (1, 1, 1)), LayoutBox("b", (2, 0, 0), (4, 1, 1))]
    centres = torch.stack([b.centre for b in boxes])
    halves = torch.stack([b.half for b in boxes])
    means = torch.tensor([[0.5, 0.0, 0.0], [1.5, 0.0, 2.0], [3.0, 0.5, 0.5]])
    group = torch.tensor([0, 0, 1])
    # only the second is out of its box: 0.5 in x, 1.0 in z → (0.25 + 1.0) / 3 Gaussians
    assert containment_penalty(means, group, centres, halves).item() == pytest.approx(1.25 / 3)
    assert containment_penalty(means[[0, 2]], group[[0, 2]], centres, halves).item() == 0.0


# ------------------------------------------------------------------------------------------ Gaussians with groups


def semantic_cfg(*overrides):
    return load_config("gs_semantic.yaml", ["representation.num_points=400", *overrides])


def test_layout_gaussians_start_in_their_boxes_and_render_their_groups():
    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.components import build_representation

    cfg = semantic_cfg()
    model = build_representation(cfg, torch.Generator().manual_seed(0))
    boxes = resolve_layout(cfg)
    group = model.params["group"]
    assert group.dtype == torch.long and not group.requires_grad and set(group.tolist()) == {0, 1}
    lo = torch.tensor([b.box_min for b in boxes])[group]
    hi = torch.tensor([b.box_max for b in boxes])[group]
    assert ((model.means >= lo) & (model.means <= hi)).all()  # each Gaussian starts in its own group's box
    assert (group == 0).sum() == (group == 1).sum() == 200
    assert all(g["name"] != "gaussians.group" for g in model.parameter_groups())
    cams = cameras_from_spherical(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.7, 2.7]),
                                  torch.tensor([40.0, 40.0]), 32, 32)
    out = model.render(cams, background=torch.tensor([0.9, 0.9, 0.9]))
    groups = out.extras["groups"]
    assert groups.shape == (2, 32, 32, 2) and out.rgb.shape == (2, 32, 32, 3)
    # the groups are rendered like colour: their shares add up to the alpha
    torch.testing.assert_close(groups.sum(-1, keepdim=True), out.alpha, atol=1e-5, rtol=1e-5)
    # the top part (the cube, group 0) is in the upper half of a side view (image rows grow downwards)
    rows = torch.arange(32, dtype=torch.float32).view(1, 32, 1)
    mean_row = [(groups[0, ..., k] * rows[0]).sum() / groups[0, ..., k].sum() for k in range(2)]
    assert mean_row[0] < 16 < mean_row[1]
    # a part alone: the other group is invisible, and the part is moved to the origin (centred in the image)
    alone = model.render(cams, background=torch.tensor([0.9, 0.9, 0.9]), part=0)
    assert alone.extras["part"] == 0 and "groups" not in alone.extras
    a = alone.alpha[0, ..., 0]
    centre_row = (a * torch.arange(32.0).view(32, 1)).sum() / a.sum()
    assert abs(centre_row - 15.5) < 2.5
    # zoomed about its centre: twice as large in the image (the alpha's spread doubles)
    big = model.render(cams, background=torch.tensor([0.9, 0.9, 0.9]), part=0, zoom=2.0).alpha[0, ..., 0]

    def spread(a):
        cols = torch.arange(32.0).view(1, 32)
        mean = (a * cols).sum() / a.sum()
        return ((a * (cols - mean) ** 2).sum() / a.sum()).sqrt()
    assert 1.7 < spread(big) / spread(a) < 2.3


def test_groups_survive_densification_and_a_checkpoint_round_trip():
    from dreamkit.components import build_representation
    from dreamkit.representations.particles import resize_to_state

    cfg = semantic_cfg()
    model = build_representation(cfg, torch.Generator().manual_seed(0))
    strategy = model.strategy
    n = model.num_gaussians
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[0, 1, n - 1]] = True  # two of group 0, one of group 1
    before = model.params["group"][mask].tolist()
    strategy._split(model, None, mask, torch.Generator().manual_seed(0))
    group = model.params["group"]
    assert group.dtype == torch.long and len(group) == model.num_gaussians == n + 3
    assert sorted(group[-6:].tolist()) == sorted(before * 2)  # each child keeps its parent's group
    strategy._remove(model, None, torch.arange(model.num_gaussians) % 7 == 0)
    assert len(model.params["group"]) == model.num_gaussians
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = build_representation(cfg, torch.Generator().manual_seed(1))
    resize_to_state(fresh, state)
    fresh.load_state_dict(state)
    assert fresh.params["group"].dtype == torch.long
    assert torch.equal(fresh.params["group"], model.params["group"])


# ------------------------------------------------------------------------------------------------ the masked mix

T = torch.tensor([500])
IMAGE = torch.linspace(0.1, 0.9, 16).view(1, 4, 4, 1)
NOISE = torch.linspace(-1.0, 1.0, 16).view(1, 1, 4, 4).flip(-1)


def prior4():
    prior = TextPrior({"a": (0.3, 0.2), "b": (0.6, -0.1), "g": (0.45, 0.05)})
    return prior


def semantic(prior, **kw):
    kw.setdefault("guidance_scale", 7.0)
    return SemanticSDSGuidance(OmegaConf.structured(SemanticSDSConfig(**kw)), prior, max_steps=100)


def sds_grad(prior, prompt, scale=7.0):
    guidance = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=scale)), prior, max_steps=100)
    x = IMAGE.permute(0, 3, 1, 2).clone().requires_grad_(True)
    out = guidance.distill(x, Batch(None, prior.encode_text([prompt])), 0, t=T, noise=NOISE)
    out["loss_sds"].backward()
    return x.grad


def semantic_grad(guidance, groups, alpha, regions, prompt="g"):
    prior = guidance.prior
    rgb = IMAGE.clone().requires_grad_(True)
    out = RenderOutput(rgb=rgb, alpha=alpha, depth=torch.zeros_like(alpha), extras={"groups": groups})
    batch = Batch(None, prior.encode_text([prompt]), regions=prior.encode_text(regions))
    terms = guidance(out, batch, 0, t=T, noise=NOISE)
    terms["loss_sds"].backward()
    return rgb.grad.permute(0, 3, 1, 2), terms


def halves():
    """Two groups holding the left and the right half of a fully opaque 4×4 image."""
    left = torch.zeros(1, 4, 4, 1)
    left[:, :, :2] = 1
    return torch.cat([left, 1 - left], -1), torch.ones(1, 4, 4, 1)


def test_one_region_covering_the_image_is_sds():
    prior = prior4()
    groups, alpha = torch.ones(1, 4, 4, 1), torch.ones(1, 4, 4, 1)
    got, _ = semantic_grad(semantic(prior, global_weight=0.0), groups, alpha, ["a"])
    torch.testing.assert_close(got, sds_grad(prior, "a"), atol=1e-6, rtol=1e-6)


def test_two_disjoint_regions_with_one_prompt_are_sds_and_the_reference_halves_it():
    prior = prior4()
    groups, alpha = halves()
    want = sds_grad(prior, "a")
    got, _ = semantic_grad(semantic(prior, global_weight=0.0), groups, alpha, ["a", "a"])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # the reference's 1/K over the active prompts: every pixel covered once, divided by 2
    ref, _ = semantic_grad(semantic(prior, global_weight=0.0, normalisation="reference"), groups, alpha, ["a", "a"])
    torch.testing.assert_close(ref, want / 2, atol=1e-6, rtol=1e-6)


def test_masked_mix_by_hand():
    """Left half group "a", right half "b", the bottom row transparent (background, no dilation): r = (r_g + r_k)/2
    on a part's pixels and r_g on the background, r_y = ε̂_s(x_t; y) − ε with ε̂_s = ε̂_u + s(ε̂_y − ε̂_u)."""
    prior = prior4()
    groups, alpha = halves()
    groups[:, 3], alpha[:, 3] = 0, 0
    got, terms = semantic_grad(semantic(prior, mask_dilation=0), groups, alpha, ["a", "b"])
    abar = prior.alphas_cumprod[500]
    x = IMAGE.permute(0, 3, 1, 2)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * NOISE

    def r(name):  # ε̂_u is the empty negative prompt's (0.2, 0)
        eps_u = 0.2 * x_t
        a, b = prior.table[name]
        return eps_u + 7.0 * (a * x_t + b - eps_u) - NOISE

    want = r("g").clone()
    want[..., :3, :2] = (r("g") + r("a"))[..., :3, :2] / 2
    want[..., :3, 2:] = (r("g") + r("b"))[..., :3, 2:] / 2
    want = want * (1 - abar)  # w(t) = 1 − ᾱ_t (the sds weighting), and the loss is per image of the batch
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert terms["sds_part0_coverage"].item() == pytest.approx(6 / 16)


def test_dilation_never_takes_another_groups_pixels():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        groups = torch.rand(2, 3, 12, 12, generator=gen) ** 4
        alpha = (groups.sum(1, keepdim=True) * 1.3).clamp(max=1.0)
        masks = semantic_masks(groups, alpha, 0.5, 2).bool()
        share = groups / groups.sum(1, keepdim=True)
        held = (share > 0.5) & (alpha >= 0.5)
        for k in range(3):
            others = held[:, [j for j in range(3) if j != k]].any(1)
            assert not (masks[:, k] & others).any()
            assert (masks[:, k] | ~held[:, k]).all()  # and keeps its own
        assert masks.sum() > held.sum()  # it did grow


def test_combine_region_residuals_weights():
    r_g, r_a = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 3.0)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    out = combine_region_residuals(r_g, [r_a], masks, 0.5, 2.0)
    # covered pixel: (0.5·1 + 2·3) / 2.5; elsewhere 0.5·1 / max(1, 0.5)
    assert out[0, 0, 0, 0].item() == pytest.approx(6.5 / 2.5)
    assert out[0, 0, 1, 1].item() == pytest.approx(0.5)


def test_alternation_cycles_parts_alone_then_the_scene():
    prior = prior4()
    guidance = semantic(prior, mode="alternate")
    batch = Batch(None, prior.encode_text(["g"]), regions=prior.encode_text(["a", "b"]))
    assert [guidance.render_options(s, batch) for s in range(4)] == [{"part": 0, "zoom": 1.0}, {"part": 1, "zoom": 1.0},
                                                                      {}, {"part": 0, "zoom": 1.0}]
    # on a part's step the part's prompt is SDS's prompt, on the scene's step the scene's
    for step, prompt in ((0, "a"), (1, "b"), (2, "g")):
        rgb = IMAGE.clone().requires_grad_(True)
        alpha = torch.ones(1, 4, 4, 1)
        out = RenderOutput(rgb=rgb, alpha=alpha, depth=alpha * 0)
        guidance(out, batch, step, t=T, noise=NOISE)["loss_sds"].backward()
        torch.testing.assert_close(rgb.grad.permute(0, 3, 1, 2), sds_grad(prior, prompt), atol=1e-6, rtol=1e-6)


def test_semantic_guidance_errors():
    prior = prior4()
    with pytest.raises(ConfigError, match="guidance.mode"):
        semantic(prior, mode="sometimes")
    guidance = semantic(prior)
    rgb = IMAGE.clone()
    out = RenderOutput(rgb=rgb, alpha=torch.ones(1, 4, 4, 1), depth=torch.zeros(1, 4, 4, 1))
    with pytest.raises(ConfigError, match="layout=auto"):
        guidance(out, Batch(None, prior.encode_text(["g"])), 0, t=T, noise=NOISE)
    with pytest.raises(ConfigError, match="representation.init=layout"):
        guidance(out, Batch(None, prior.encode_text(["g"]), regions=prior.encode_text(["a", "b"])), 0, t=T,
                 noise=NOISE)


# ------------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("mode", ["masked", "alternate"])
def test_semantic_fit_end_to_end(tmp_path, mode):
    from dreamkit.run import fit

    cfg = semantic_cfg(f"guidance.mode={mode}", "trainer.max_steps=12", "trainer.val_every=0",
                       "trainer.checkpoint_every=0", f"output_dir={tmp_path}", "export.formats=[ply]",
                       "export.turntable=false", "camera.batch_size=2")
    run_dir = fit(cfg)
    ckpt = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    group = ckpt["state_dict"]["representation.params.group"]
    assert group.dtype == torch.long and set(group.tolist()) == {0, 1}
    assert (run_dir / "exports" / "gaussians.ply").exists()


def test_score_parts_on_the_truth_and_on_swapped_colours():
    from dreamkit.eval.benchmark import score_parts
    from dreamkit.export.mesh import Mesh
    from dreamkit.world.captions import parse_prompt

    scene = parse_prompt("a red cube on top of a blue sphere")
    verts, faces, face_colours = scene.mesh()
    colours = torch.zeros_like(verts)
    colours[faces.reshape(-1)] = face_colours.repeat_interleave(3, 0)
    mesh = Mesh(verts.numpy(), faces.numpy(), vertex_colors=colours.numpy())
    row = score_parts(mesh, scene)
    assert row["ok"] and row["parts_ok"] == 2 and row["parts"] == "cube/red ✓ · sphere/blue ✓"
    swapped = Mesh(verts.numpy(), faces.numpy(), vertex_colors=colours.numpy()[:, [2, 1, 0]])
    row = score_parts(swapped, scene)
    assert not row["ok"] and row["parts_ok"] == 0 and row["shape_ok"] and not row["colour_ok"]
