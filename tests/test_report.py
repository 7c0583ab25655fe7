"""`dreamkit report`: the run page opens offline in a real browser and shows the exported object; galleries list every
prompt; an edited report is never overwritten; a shared run folder cannot make its page embed files from elsewhere."""
from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest

from dreamkit.cli import main
from dreamkit.report.build import MANIFEST, MODEL_VIEWER, is_untouched_report

# the page records model-viewer's own events; installed before any page script runs
LISTEN = """
window.__model = null;
document.addEventListener('load', e => { if (e.target.tagName === 'MODEL-VIEWER') window.__model = 'load'; }, true);
document.addEventListener('error', e => {
  if (e.target.tagName === 'MODEL-VIEWER') window.__model = 'error ' + JSON.stringify(e.detail && e.detail.type);
}, true);
"""


def test_a_finished_fit_writes_its_page(red_run):
    page = red_run / "report" / "index.html"
    assert page.is_file()
    text = page.read_text()
    assert "data:model/gltf-binary;base64," in text           # the GLB travels inside the page
    assert f'<script src="{MODEL_VIEWER}">' in text and (red_run / "report" / MODEL_VIEWER).is_file()
    for name in ("loss.png", "metrics.png", "turntable.mp4", "mesh.glb"):
        assert (red_run / "report" / name).is_file(), name
    assert "a red cube" in text and "lambda_sds" in text      # prompt and the resolved config
    assert is_untouched_report(red_run / "report")


def test_run_page_in_a_browser_offline(red_run, chromium):
    """The page from disk, every non-file request refused: no console error, <model-viewer> fires `load` for the
    GLB, every image loads, and a screenshot of the viewer shows a red object on a light background."""
    page = chromium.new_page(viewport={"width": 1100, "height": 900})
    problems, requests = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def only_local(route):
        requests.append(route.request.url)
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_local)
    page.add_init_script(LISTEN)
    page.goto((red_run / "report" / "index.html").as_uri())
    page.wait_for_function("window.__model !== null", timeout=30_000)
    assert page.evaluate("window.__model") == "load"
    assert page.evaluate("document.body.dataset.model") == "loaded"
    page.wait_for_timeout(500)  # a frame after load
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("video").count() == 1
    shot = page.locator("model-viewer").screenshot()
    page.close()
    assert not problems, problems
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests
    import imageio.v3 as iio

    rgb = iio.imread(io.BytesIO(shot))[..., :3].astype(np.int32)
    assert rgb.std() > 20, "the model-viewer screenshot is blank"
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > 120) & (r > g + 60) & (r > b + 60)
    assert red.mean() > 0.05, f"only {red.mean():.1%} of the viewer is red"
    corner = rgb[:20, :20].reshape(-1, 3).mean(0)
    assert corner.min() > 200, f"the background is not light: {corner}"


def test_report_twice_replaces_an_untouched_report_and_keeps_an_edited_one(red_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(red_run, run, ignore=shutil.ignore_patterns("report*"))
    assert main(["report", str(run)]) == 0
    first = (run / "report").stat().st_ino
    assert main(["report", str(run)]) == 0          # untouched: regenerated in place (a new folder swapped in)
    assert not (run / "report-1").exists() and (run / "report").stat().st_ino != first
    assert is_untouched_report(run / "report")
    notes = run / "report" / "notes.txt"             # someone's file in the report folder
    notes.write_text("mine")
    assert main(["report", str(run)]) == 0
    assert notes.read_text() == "mine" and (run / "report-1" / "index.html").is_file()
    assert "kept as it is" in capsys.readouterr().out
    (run / "report-1" / "index.html").write_text("edited")   # an edited page is kept too
    assert main(["report", str(run)]) == 0
    assert (run / "report-1" / "index.html").read_text() == "edited" and (run / "report-2").is_dir()


def test_a_link_out_of_the_run_folder_is_not_embedded(red_run, tmp_path):
    run = tmp_path / "shared_run"
    shutil.copytree(red_run, run, ignore=shutil.ignore_patterns("report*"))
    secret = tmp_path / "secret.glb"
    secret.write_bytes(b"glTF not for sharing")
    (run / "exports" / "mesh.glb").unlink()
    (run / "exports" / "mesh.glb").symlink_to(secret)
    assert main(["report", str(run)]) == 0
    text = (run / "report" / "index.html").read_text()
    assert "data:model/gltf-binary" not in text and "no GLB in exports/" in text
    assert not (run / "report" / "mesh.glb").exists()


def _write_results(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "kind", "ok", "nearest_shape", "colour", "fit_s", "run_dir"])
        writer.writeheader()
        writer.writerows(rows)


def test_eval_gallery_lists_every_prompt(red_run, tmp_path):
    """An eval folder (results.csv + runs/): a card per prompt in the table's order, each found run linked to its
    page with its scores; a run recorded with a path that no longer exists is found under runs/, a missing one is
    named."""
    eval_dir = tmp_path / "eval"
    moved = eval_dir / "runs" / red_run.parent.name / red_run.name
    shutil.copytree(red_run, moved, ignore=shutil.ignore_patterns("report*"))
    rows = [
        {"prompt": "a red cube", "kind": "single", "ok": "True", "nearest_shape": "cube", "colour": "red",
         "fit_s": "3.0", "run_dir": str(red_run)},
        {"prompt": "a blue torus", "kind": "single", "ok": "False", "nearest_shape": "sphere", "colour": "blue",
         "fit_s": "3.1", "run_dir": f"outputs/eval/elsewhere/runs/{red_run.parent.name}/{red_run.name}"},
        {"prompt": "a green cone", "kind": "single", "ok": "False", "nearest_shape": "", "colour": "",
         "fit_s": "0", "run_dir": str(tmp_path / "gone")},
    ]
    _write_results(eval_dir / "results.csv", rows)
    assert main(["report", str(eval_dir)]) == 0
    index = (eval_dir / "report" / "index.html").read_text()
    for row in rows:
        assert row["prompt"] in index, row["prompt"]
    assert index.index("a red cube") < index.index("a blue torus") < index.index("a green cone")
    assert index.count('class="card"') == 3
    assert "run folder not found" in index and str(tmp_path / "gone") in index
    pages = sorted((eval_dir / "report" / "runs").glob("*/index.html"))
    assert [p.parent.name for p in pages] == ["01-a_red_cube", "02-a_blue_torus"]
    sub = pages[1].read_text()
    assert "Eval scores" in sub and "sphere" in sub and "data:model/gltf-binary" in sub
    assert f'src="../../{MODEL_VIEWER}"' in sub and (eval_dir / "report" / MODEL_VIEWER).is_file()


def test_batch_gallery(red_run, tmp_path):
    out = red_run.parent.parent   # output_dir: outputs/<name>/<run>
    dest = tmp_path / "gallery"
    assert main(["report", str(out), "--output", str(dest)]) == 0
    index = (dest / "index.html").read_text()
    assert index.count('class="card"') == 1 and "a red cube" in index
    assert (dest / MANIFEST).is_file()


def test_bad_folders_fail_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "holds no run folder" in err and len(err.strip().splitlines()) == 1


def test_report_false_skips_the_page(tmp_path):
    from omegaconf import OmegaConf

    from dreamkit.cli import _write_run_page

    _write_run_page(OmegaConf.create({"report": False}), tmp_path)
    assert not (tmp_path / "report").exists()


def test_metrics_of_a_resumed_run_are_merged(tmp_path):
    """A resumed fit logs beside the first part (logs/resume-N/); its points replace the first part's from its
    first step on (the killed process had logged steps after its last checkpoint); blanks and text are skipped."""
    from dreamkit.report.metrics import read_metrics

    logs = tmp_path / "logs"
    (logs / "resume-1").mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train/loss,val/psnr\n0,10,4.0,\n0,20,3.0,\n0,30,9.0,\n,30,,12.5\n"
                                      "0,40,nan,\n")
    (logs / "resume-1" / "metrics.csv").write_text("epoch,step,train/loss\n0,30,2.0\n0,40,1.0\n0,50,oops\n")
    metrics = read_metrics(tmp_path)
    assert metrics["train/loss"] == ([10, 20, 30, 40], [4.0, 3.0, 2.0, 1.0])
    assert "val/psnr" not in metrics  # its only point was at step 30, after which the resumed part replaces all
    assert read_metrics(tmp_path / "nothing") == {}
