"""The wheel carries the shipped configs and assets, and `import dreamkit` stays light."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = ("import sys, dreamkit, dreamkit.cli, dreamkit.config; "
            "heavy = [m for m in ('diffusers', 'transformers', 'gsplat', 'nerfacc', 'kaolin', 'tinycudann', "
            "'nvdiffrast', 'pytorch_lightning') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_wheel_ships_configs_and_assets(tmp_path):
    pytest.importorskip("hatchling")
    from hatchling.builders.wheel import WheelBuilder

    builder = WheelBuilder(str(ROOT))
    (wheel,) = list(builder.build(directory=str(tmp_path), versions=["standard"]))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dreamkit/_shipped/configs/gs_sds.yaml" in names
    assert "dreamkit/_shipped/configs/gs_oracle.yaml" in names
    assert "dreamkit/_shipped/assets/meshes/house.ply" in names
    # the run page's vendored <model-viewer> and its license travel in the package (no npm for pip users)
    assert {"dreamkit/report/assets/model-viewer-umd.min.js", "dreamkit/report/assets/NOTICE",
            "dreamkit/report/assets/LICENSE.model-viewer"} <= set(names)
    # installed from the wheel, `--config gs_sds.yaml` and asset lookup resolve inside the package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from dreamkit.config import resolve_config_path; from dreamkit.assets import asset_path; "
            "print(resolve_config_path('gs_sds.yaml')); print(asset_path('meshes/house.ply'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(site)) and out[0].endswith("_shipped/configs/gs_sds.yaml")
    assert out[1].startswith(str(site))
