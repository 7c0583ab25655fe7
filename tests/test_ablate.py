"""The 2D playground (representation.name=image) and `dreamkit ablate`: the image's gradient is the guidance's g, a
grid writes its tables and plots, resumes without redoing finished cells, shares random numbers across cells, and
refuses a bad grid file with one line naming the closest valid key."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch
from dreamkit.cameras import cameras_from_spherical
from dreamkit.cli import main
from dreamkit.errors import DreamkitError
from dreamkit.guidance.sds import SDSConfig, SDSGuidance
from dreamkit.representations.image import ImageConfig, ImageModel


def _pinned_cameras(n: int, side: int):
    return cameras_from_spherical(torch.full((n,), 15.0), torch.zeros(n), torch.full((n,), 2.75),
                                  torch.full((n,), 40.0), side, side)


@pytest.fixture(scope="module")
def world_meshes(tmp_path_factory):
    from dreamkit.world.scenes import single_scene

    folder = tmp_path_factory.mktemp("meshes")
    return {name: single_scene(shape, colour).export(folder / f"{colour}_{shape}.ply")
            for name, (shape, colour) in {"cube": ("cube", "red"), "sphere": ("sphere", "blue")}.items()}


@pytest.fixture(scope="module")
def oracle(world_meshes):
    from dreamkit.priors.oracle import OraclePrior

    return OraclePrior(targets=[{"mesh": str(world_meshes["cube"]), "label": "a red cube"},
                                {"mesh": str(world_meshes["sphere"]), "label": "a blue sphere"}], resolution=16)


def _sds_by_hand(prior, x, t, noise, text, cams, scale):
    """g = w(t)·(ε̂_u + s·(ε̂_c − ε̂_u) − ε), w = 1 − ᾱ_t (DreamFusion), for x [1, C, h, w] and B draws."""
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    eps = prior.predict_cfg(x_t, t, text, scale, cams)
    return (1 - abar) * (eps.float() - noise)


@pytest.mark.parametrize("activation", ["clamp", "sigmoid"])
def test_image_gradient_is_the_guidance_g_for_sds(oracle, activation):
    """The reparametrised SDS loss on the image: ∂loss/∂pixels = (∂x/∂pixels)·Σ_b g_b / B, with x = 2·pixels − 1 and
    g worked by hand from the exact oracle (B = 2 noise draws of one image, CFG s = 3 against a second label). With
    clamp the pixels are the parameter (the factor is exactly 2); with sigmoid it is 2·σ'(θ)."""
    cfg = OmegaConf.structured(ImageConfig(init="noise", init_noise=0.3, init_noise_size=0, activation=activation))
    model = ImageModel(cfg, torch.Generator().manual_seed(0))
    model.bind_prior(oracle)
    assert tuple(model.params["pixels"].shape) == (1, 3, 16, 16)
    cams = _pinned_cameras(2, 16)
    text = oracle.encode_text(["a red cube"] * 2)
    guidance = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=3.0)), oracle, max_steps=10)
    t = torch.tensor([250, 700])
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = model.render(cams)
    assert out.rgb.shape == (2, 16, 16, 3)
    terms = guidance(out, Batch(cams, text), 0, t=t, noise=noise)
    terms["loss_sds"].backward()
    pixels = model.pixels().detach()
    g = _sds_by_hand(oracle, pixels * 2 - 1, t, noise, text, cams, 3.0)
    torch.testing.assert_close(terms["loss_sds"].detach(), 0.5 * g.square().sum() / 2, rtol=1e-5, atol=1e-7)
    dx = 2.0 if activation == "clamp" else 2.0 * pixels * (1 - pixels)
    torch.testing.assert_close(model.params["pixels"].grad, dx * g.sum(0, keepdim=True) / 2, rtol=1e-5, atol=1e-7)
    if activation == "clamp":  # pixels at the bounds still get their gradient (inclusive clamp), then are projected
        raw = model.params["pixels"]
        assert bool(((raw == 0) | (raw == 1)).any())
        with torch.no_grad():
            raw.add_(0.5)
        model.post_step(0, out, None, cams)
        assert float(raw.detach().max()) == 1.0


def test_latent_image_gradient_is_g_without_the_encoder(tiny_sd_dir, monkeypatch):
    """A latent prior: the image is the latents, handed to the guidance as x (no VAE encoder in the loop):
    ∂loss/∂latents = Σ_b g_b / B exactly; the VAE decodes it only for viewing."""
    from dreamkit.priors.diffusers_sd import StableDiffusionPrior

    prior = StableDiffusionPrior(str(tiny_sd_dir))
    model = ImageModel(OmegaConf.structured(ImageConfig()), torch.Generator().manual_seed(0))
    model.bind_prior(prior)
    side = prior.resolution // prior.vae_scale_factor
    assert model.latent and tuple(model.params["pixels"].shape) == (1, prior.channels, side, side)
    monkeypatch.setattr(prior, "encode", lambda *a, **k: pytest.fail("the encoder must not run"))
    cams = _pinned_cameras(2, prior.resolution)
    text = prior.encode_text(["a red cube"] * 2)
    guidance = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=7.5)), prior, max_steps=10)
    t = torch.tensor([100, 900])
    noise = torch.randn(2, prior.channels, side, side, generator=torch.Generator().manual_seed(2))
    out = model.render(cams)
    assert out.extras["prior_x"].shape == (2, prior.channels, side, side)
    assert out.rgb.shape == (2, prior.resolution, prior.resolution, 3)
    guidance(out, Batch(cams, text), 0, t=t, noise=noise)["loss_sds"].backward()
    g = _sds_by_hand(prior, model.params["pixels"].detach(), t, noise, text, cams, 7.5)
    torch.testing.assert_close(model.params["pixels"].grad, g.sum(0, keepdim=True) / 2, rtol=1e-5, atol=1e-7)
    assert model.view().shape == (prior.resolution, prior.resolution, 3)


def test_image_exports_a_png_and_no_mesh(oracle, tmp_path):
    from dreamkit.registry import exporter

    model = ImageModel(OmegaConf.structured(ImageConfig(init="grey", init_color=[0.2, 0.4, 0.6])))
    model.bind_prior(oracle)
    path = exporter("png")(model, tmp_path / "image.png")
    import imageio.v2 as imageio

    image = imageio.imread(path)
    assert image.shape == (16, 16, 3) and abs(int(image[0, 0, 2]) - 153) <= 1
    with pytest.raises(DreamkitError, match="no mesh"):
        exporter("glb")(model, tmp_path / "mesh.glb")
    assert model.export_formats == ("png",)


# -------------------------------------------------------------------------------------------------------- ablate
def _grid(tmp_path: Path, extra: str = "", losses=("sds", "asd"), seeds=(0, 1), steps: int = 8) -> Path:
    # SDS as the guidance family's base recipe (gs_sds32.yaml), whose timestep range the other losses share
    axes = "\n".join(f"    {name}: {{loss_recipe: gs_{'sds32' if name == 'sds' else name}.yaml}}" for name in losses)
    text = f"""name: tiny
recipe: image_oracle.yaml
config:
  prompt: an object
  prior:
    resolution: 16
    targets:
      - {{mesh: "world:a red cube", label: an object}}
      - {{mesh: "world:a blue sphere", label: an object}}
  camera: {{width: 16, height: 16, batch_size: 1}}
overrides: [trainer.max_steps={steps}]
axes:
  loss:
{axes}
seeds: [{', '.join(map(str, seeds))}]
prompts: [an object]
{extra}"""
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    """2 losses × 2 seeds × 8 steps of a 16² image against the oracle, through the CLI."""
    root = tmp_path_factory.mktemp("ablate")
    out = root / "out"
    assert main(["ablate", "--grid", str(_grid(root)), "--out", str(out)]) == 0
    return root, out


def test_tiny_grid_writes_csv_md_and_pngs(finished_grid):
    _, out = finished_grid
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["loss"] for r in rows} == {"sds", "asd"} and {r["seed"] for r in rows} == {"0", "1"}
    for key in ("psnr", "rmse", "covers", "saturation", "wall_s"):
        assert all(r[key] != "" for r in rows), key
    md = (out / "results.md").read_text()
    assert "| loss |" in md and "| sds |" in md and "| asd |" in md and "modes" in md and "±" in md
    for name in ("metrics.png", "images.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 4 and all(json.loads(p.read_text())["rows"] for p in cells)


def test_rerun_runs_only_the_missing_cell(finished_grid, capsys):
    """Delete one cell's result and leave a half-written one behind (a killed run): the same command runs that cell
    only, says how many it kept, and leaves the other results untouched."""
    root, out = finished_grid
    cells = sorted((out / "cells").glob("*.json"))
    victim = cells[1]
    before = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in cells if p != victim}
    victim.unlink()
    (out / "cells" / f".{victim.name}.tmp-99999").write_text("{half")  # an interrupted atomic write
    capsys.readouterr()
    assert main(["ablate", "--grid", str(root / "grid.yaml"), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "resuming: 3 of 4 cells finished earlier" in log
    ran = [line for line in log.splitlines() if "] run " in line]
    assert len(ran) == 1, log
    assert victim.is_file()
    after = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "cells").glob("*.json") if p != victim}
    assert after == before
    # nothing left to do: nothing runs
    assert main(["ablate", "--grid", str(root / "grid.yaml"), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "4 of 4 cells finished earlier" in log and "] run " not in log


def test_common_random_numbers(tmp_path, monkeypatch):
    """Same seed, same loss: identical results. Same seed, another loss: the same timesteps and noise at every step
    (handed to the guidance); another seed: other draws."""
    from dreamkit.ablate import load_grid, run_cell
    from dreamkit.guidance.base import ScoreDistillation

    grid = load_grid(str(_grid(tmp_path, steps=5)))
    seen: dict[str, list] = {}
    original = ScoreDistillation.forward
    current = {"id": None}

    def recording(self, out, batch, step, generator=None, t=None, noise=None):
        seen.setdefault(current["id"], []).append((t.clone(), noise.clone()))
        return original(self, out, batch, step, generator, t=t, noise=noise)

    monkeypatch.setattr(ScoreDistillation, "forward", recording)
    by = {(c.axes["loss"], c.seed): c for c in grid.cells}
    results = {}
    for key, folder in ((("sds", 0), "a"), (("sds", 0), "b"), (("asd", 0), "a"), (("sds", 1), "a")):
        cell = by[key]
        current["id"] = f"{key}{folder}"
        results[current["id"]] = run_cell(cell, tmp_path / folder)
    one, two = results["('sds', 0)a"], results["('sds', 0)b"]
    assert one["rows"] == two["rows"]
    cell_id = by[("sds", 0)].id
    assert (tmp_path / "a" / "cells" / cell_id / "p0.png").read_bytes() == \
        (tmp_path / "b" / "cells" / cell_id / "p0.png").read_bytes()
    sds, asd, other = seen["('sds', 0)a"], seen["('asd', 0)a"], seen["('sds', 1)a"]
    assert len(sds) == len(asd) == 5
    for (t1, n1), (t2, n2) in zip(sds, asd):
        assert torch.equal(t1, t2) and torch.equal(n1, n2)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(sds, other))


BAD_GRIDS = {
    "unknown grid key": ("axis:\n  loss:\n    sds: []\n", "unknown grid key 'axis' — did you mean axes?"),
    "unknown value key": (None, "unknown key 'axes.loss.sds.overides' — did you mean overrides?"),
    "unknown config key": (None, "unknown config key 'guidance.guidance_scal' — did you mean guidance.guidance_scale"),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_one_line_exit_2(case, tmp_path, capsys):
    path = _grid(tmp_path)
    text = path.read_text()
    if case == "unknown grid key":
        text += BAD_GRIDS[case][0]
    elif case == "unknown value key":
        text = text.replace("sds: {loss_recipe: gs_sds32.yaml}", "sds: {loss_recipe: gs_sds32.yaml, overides: []}")
    else:
        text = text.replace("sds: {loss_recipe: gs_sds32.yaml}", "sds: {overrides: [guidance.guidance_scal=3]}")
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["ablate", "--grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and BAD_GRIDS[case][1] in err[0], err
    if case == "unknown config key":
        assert "axes.loss.sds" in err[0]
    assert not out.exists()  # refused before any work


def test_shipped_grids_parse():
    from dreamkit.ablate import load_grid

    grid = load_grid("playground_2d")
    assert len(grid.cells) == 8 * 3 * 2 and {c.kind for c in grid.cells} == {"2d"}
    assert {c.axes["loss"] for c in grid.cells} == {"sds", "asd", "vsd", "ism", "csd", "nfsd", "bsd", "bridge"}
    assert len({c.id for c in grid.cells}) == len(grid.cells)
    oracle = load_grid("playground_2d_oracle")
    assert {c.config["prior"]["type"] for c in oracle.cells} == {"oracle"}


def test_fit_an_image_against_the_oracle(tmp_path, capsys):
    """`dreamkit fit --config image_oracle.yaml`: a short fit approaches the known target, writes exports/image.png,
    and `dreamkit export --format all` skips what an image cannot be."""
    from dreamkit.run import run_folders

    assert main(["fit", "--config", "image_oracle.yaml", "trainer.max_steps=40", "prior.resolution=16",
                 "camera.width=16", "camera.height=16", "trainer.progress=false", f"output_dir={tmp_path}"]) == 0
    log = capsys.readouterr().out
    psnr = float(log.split("held-out PSNR:")[1].split("dB")[0])
    assert psnr > 25, log
    (run,) = run_folders(tmp_path)
    assert (run / "exports" / "image.png").is_file()
    assert main(["export", str(run), "--output", str(tmp_path / "all")]) == 0
    log = capsys.readouterr().out
    assert "skipping ply, mp4, glb, obj: representation.name=image exports png only" in log
    assert [p.name for p in (tmp_path / "all").iterdir()] == ["image.png"]
