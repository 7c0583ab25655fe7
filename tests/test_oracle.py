"""The oracle prior's exact denoiser: known answers for one and two targets, CFG, prompt matching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamkit.cameras import cameras_from_spherical, orbit_cameras
from dreamkit.errors import DreamkitError
from dreamkit.priors.oracle import OraclePrior, normalize_prompt

RES = 32


def noisy(prior, x, t, eps):
    abar = prior.alphas_cumprod[t]
    return abar.sqrt() * x + (1 - abar).sqrt() * eps, abar.sqrt(), (1 - abar).sqrt()


@pytest.fixture(scope="module")
def one_target():
    return OraclePrior([{"mesh": "meshes/house.ply", "label": "a house"}], resolution=RES)


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory):
    """The house, and the same house with a green door (weight 3): they differ only where the door is seen."""
    import trimesh

    mesh = trimesh.load(str(_house_path()), process=False)
    colors = np.asarray(mesh.visual.vertex_colors).copy()
    door = (colors[:, :3] == [90, 50, 25]).all(1)
    assert door.any()
    colors[door, :3] = [40, 160, 60]
    mesh.visual.vertex_colors = colors
    path = tmp_path_factory.mktemp("meshes") / "green_door.ply"
    mesh.export(str(path))
    return OraclePrior([
        {"mesh": "meshes/house.ply", "label": "a house"},
        {"mesh": str(path), "label": "A house with a green door", "weight": 3.0},
    ], resolution=RES)


def _house_path():
    from dreamkit.assets import asset_path

    return asset_path("meshes/house.ply")


def front_cameras(n=2, size=RES):
    """Cameras that see the door (front half)."""
    return cameras_from_spherical(torch.full((n,), 10.0), torch.linspace(-30.0, 30.0, n), torch.full((n,), 2.5),
                                  torch.full((n,), 40.0), size, size)


def test_one_target_denoiser_is_exact(one_target):
    prior = one_target
    cams = front_cameras(3, size=96)  # any camera size: the prior renders at its own resolution
    cond = prior.encode_text(["a house"] * 3).cond
    R = prior.encode(prior.target_images(cams.with_resolution(RES, RES), "a house"))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, RES, RES, generator=gen) * 2 - 1  # not the target
    eps = torch.randn(3, 3, RES, RES, generator=gen)
    for t in (20, 400, 990):
        x_t, alpha, sigma = noisy(prior, x, t, eps)
        t_b = torch.full((3,), t)
        torch.testing.assert_close(prior.predict_x0(x_t, t_b, cond, cams), R)
        eps_hat = prior.predict(x_t, t_b, cond, cams)
        # ε̂ − ε = α/σ·(x − x̂0) for x_t = α x + σ ε
        torch.testing.assert_close(eps_hat - eps, alpha / sigma * (x - R), atol=2e-3 * float(alpha / sigma),
                                   rtol=1e-4)
        # Noise added to the target itself is recovered exactly.
        x_t, _, _ = noisy(prior, R, t, eps)
        torch.testing.assert_close(prior.predict(x_t, t_b, cond, cams), eps, atol=1e-4, rtol=1e-4)


def test_two_targets_softmax_picks_the_nearest(two_targets):
    prior = two_targets
    cams = front_cameras(2)
    R = prior.render_targets(cams)  # [B, K, 3, r, r]
    assert (R[:, 0] - R[:, 1]).abs().amax() > 0.5  # the door differs
    uncond = prior.encode_text(["a house"] * 2).uncond
    gen = torch.Generator().manual_seed(1)
    for k in (0, 1):
        eps = torch.randn(2, 3, RES, RES, generator=gen)
        x_t, _, _ = noisy(prior, R[:, k], 100, eps)
        x0 = prior.predict_x0(x_t, torch.full((2,), 100), uncond, cams)
        torch.testing.assert_close(x0, R[:, k], atol=1e-4, rtol=0)


def test_large_t_mixture_approaches_the_weighted_mean(two_targets):
    prior = two_targets
    cams = front_cameras(2)
    R = prior.render_targets(cams)
    uncond = prior.encode_text(["a house"] * 2).uncond
    assert uncond[0].tolist() == [1.0, 3.0]
    mean = (1.0 * R[:, 0] + 3.0 * R[:, 1]) / 4.0
    d = R[:, 0] - R[:, 1]

    def weight_on_first(t):
        # x_t at the centre of target 0's noisy distribution: the weight on target 0 goes from 1 (small t) to its
        # prior share 1/4 (large t).
        alpha = prior.alphas_cumprod[t].sqrt()
        x0 = prior.predict_x0(alpha * R[:, 0], torch.full((2,), t), uncond, cams)
        return ((x0 - R[:, 1]) * d).flatten(1).sum(1) / d.square().flatten(1).sum(1), x0

    w_small, _ = weight_on_first(10)
    w_large, x0_large = weight_on_first(prior.num_train_timesteps - 1)
    torch.testing.assert_close(w_small, torch.ones(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(w_large, torch.full((2,), 0.25), atol=0.03, rtol=0)
    assert ((x0_large - mean).flatten(1).norm(dim=1) < 0.05 * d.flatten(1).norm(dim=1)).all()


def test_cfg_combines_cond_and_uncond_and_renders_once(two_targets, monkeypatch):
    prior = two_targets
    cams = front_cameras(2)
    text = prior.encode_text(["A house with a green door.", "a house with a green door"])
    assert text.cond.tolist() == [[0.0, 3.0], [0.0, 3.0]]
    assert text.uncond.tolist() == [[1.0, 3.0], [1.0, 3.0]]
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 3, RES, RES, generator=gen)
    t = torch.tensor([300, 700])
    prior._cache = None
    calls = []
    original = prior._render_target
    monkeypatch.setattr(prior, "_render_target", lambda k, c: calls.append(len(c)) or original(k, c))
    eps_c = prior.predict(x_t, t, text.cond, cams)
    eps_u = prior.predict(x_t, t, text.uncond, cams)
    assert calls == [2, 2]  # one render per target, reused for the second call
    for scale in (1.0, 7.5):
        eps_cfg = prior.predict_cfg(x_t, t, text, scale, cams)
        torch.testing.assert_close(eps_cfg, eps_u + scale * (eps_c - eps_u))
    assert calls == [2, 2]  # CFG's duplicated cameras hit the cache
    torch.testing.assert_close(prior.predict_cfg(x_t, t, text, 1.0, cams), eps_c)
    # The conditional x̂0 is target 1 exactly (target 0 has weight 0).
    x0_c = prior.predict_x0(x_t, t, text.cond, cams)
    torch.testing.assert_close(x0_c, prior.render_targets(cams)[:, 1])
    # New cameras invalidate the cache.
    prior.predict(x_t, t, text.cond, front_cameras(2, size=48))
    assert calls == [2, 2, 2, 2]


def test_prompt_matching_and_errors(two_targets):
    prior = two_targets
    assert normalize_prompt("  A   House.") == "a house"
    assert normalize_prompt("a house, front view") == "a house, front view"  # priors never parse view suffixes
    assert prior.view_prompts is False  # the prompt component sends it no "…, front view" variants
    for prompt in ("a house", "A House.", "a  house "):
        assert prior.encode_text([prompt]).cond.tolist() == [[1.0, 0.0]]
    with pytest.raises(DreamkitError) as info:
        prior.encode_text(["a red car, front view"])
    message = str(info.value)
    assert "a red car, front view" in message and "a house" in message and "A house with a green door" in message
    # A negative prompt restricts the unconditional branch to the targets it names.
    text = prior.encode_text(["a house"], negative=["a house with a green door"])
    assert text.uncond.tolist() == [[0.0, 3.0]]
    x_t = torch.zeros(1, 3, RES, RES)
    with pytest.raises(DreamkitError, match="cameras"):
        prior.predict(x_t, torch.tensor([10]), text.cond, None)
    with pytest.raises(DreamkitError, match=r"\[B, K\]"):
        prior.predict(x_t, torch.tensor([10]), torch.ones(1, 5), front_cameras(1))
    with pytest.raises(DreamkitError, match="x_t"):
        prior.predict(torch.zeros(1, 3, 16, 16), torch.tensor([10]), text.cond, front_cameras(1))


def test_target_images_for_evaluation(two_targets):
    prior = two_targets
    cams = orbit_cameras(3, 40, 40, distance=2.5)
    by_label = prior.target_images(cams, "a house with a green door")
    by_index = prior.target_images(cams, 1)
    assert by_label.shape == (3, 3, 40, 40)
    assert 0 <= float(by_label.min()) and float(by_label.max()) <= 1
    torch.testing.assert_close(by_label, by_index)
    # White background at the corners, the house in the middle.
    torch.testing.assert_close(by_label[:, :, 0, 0], torch.ones(3, 3))
    assert (by_label[:, :, 20, 20] < 0.99).any(1).all()
    with pytest.raises(DreamkitError, match="labels"):
        prior.target_images(cams, "a boat")
