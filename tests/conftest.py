"""Shared pytest fixtures."""
from __future__ import annotations

import os
import tempfile

import pytest

# gsplat/nerfacc compile CUDA on first use; keep any build folder they leave out of the user's cache
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "dreamkit_test_torch_extensions"))


@pytest.fixture(scope="session")
def load_script():
    """``load_script("name")``: ``scripts/name.py`` imported as a module (the scripts are not a package), so a test can
    call its functions or its ``main(argv)`` in process."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline (ε-prediction) in diffusers format, built once per test session."""
    from dreamkit.priors.tiny_random import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory):
    """A tiny random pixel-space prior (the embedded priors' layout, MiniLM text encoder)."""
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    return build_tiny_random_pixel_prior(tmp_path_factory.mktemp("tiny_pixel"), world_captions=["a red cube"])


#: how to get what the browser tests need (their skip reason names it)
BROWSER_INSTALL = "apt-get install chromium && pip install playwright (or pip install -e \".[dev,viewer]\")"


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium driven by Playwright, the system browser (Playwright's own browser download is not
    needed); skips with the install command when either is missing."""
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"needs playwright and Chromium: {BROWSER_INSTALL}")
    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        pytest.skip(f"needs a Chromium binary on PATH: {BROWSER_INSTALL}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def red_run(tmp_path_factory):
    """A finished short fit of a red object (Gaussians started red, SDS against the oracle of the tiny world's red
    cube), with its GLB, turntable and run page, in about 10 s."""
    from dreamkit.cli import main
    from dreamkit.run import run_folders
    from dreamkit.world import parse_prompt

    root = tmp_path_factory.mktemp("red_run")
    target = parse_prompt("a red cube").export(root / "red_cube.ply")
    code = main(["fit", "--config", "gs_oracle.yaml", "prompt=a red cube", f"output_dir={root / 'out'}",
                 f"prior.targets=[{{mesh: {target}, label: a red cube}}]", "prior.resolution=32",
                 "camera.width=32", "camera.height=32", "representation.num_points=800",
                 "representation.init_color=[0.8,0.1,0.1]", "trainer.max_steps=20", "trainer.progress=false",
                 "export.formats=[glb]", "export.mesh_method=hull", "export.mesh_resolution=48",
                 "export.mesh_views=12", "export.texture_size=256", "export.mesh_preview=false",
                 "export.turntable_frames=8", "export.turntable_resolution=32"])
    assert code == 0
    (run,) = run_folders(root / "out")
    return run
