"""``dreamkit report``: a self-contained HTML folder for a run, or a gallery for an eval or batch folder.

What a page shows comes only from files that exist; nothing is rendered or fitted:

* a run (a folder with ``config.yaml``): the newest exported GLB in ``<model-viewer>`` (Google's web component,
  vendored in ``assets/``; its PBR material lit by the built-in ``neutral`` environment, so no network is needed),
  the turntable MP4, the newest held-out renders, loss and metric plots from ``logs/**/metrics.csv``, the eval scores
  when the run belongs to a ``dreamkit eval`` folder, and the resolved ``config.yaml``;
* an eval folder (``results.csv`` with ``prompt`` and ``run_dir``, as ``dreamkit eval --out DIR`` writes): a card
  per prompt with its verdict and scores, linking to its run page, the results table and the contact sheet;
* any other folder holding run folders (``outputs/``, ``outputs/gs_sds/``, an ablation's runs): a card per run.

Pages open from disk (``file://``) with no network: the GLB is embedded in the page as a ``data:`` URL (browsers do
not let a page fetch ``file://`` URLs), the script is a classic (UMD) script beside it, and every other file is
copied in. Everything read from a run folder is treated as untrusted text: it is HTML-escaped, checkpoints are read
only through the safe loader (``dreamkit/checkpoint.py``), and a file that is a link leading out of its run folder
is left out (a shared folder cannot make its report embed a file from elsewhere on your disk).

The report folder is derived output. Writing into one that exists replaces it only if it is an untouched report:
every file in it is one that ``dreamkit report`` wrote, unchanged (``.dreamkit-report.json`` lists their SHA-256).
Otherwise — files added or edited, or a folder dreamkit did not write — it is kept and the new report goes to a
fresh ``report-1`` (``-2`` …) beside it, and the command says so.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

from ..errors import DreamkitError

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_VIEWER = "model-viewer-umd.min.js"
MANIFEST = ".dreamkit-report.json"
#: a GLB larger than this is linked instead of embedded (a link opens only when the page is served over HTTP)
MAX_EMBED_BYTES = 100 * 2**20
#: how deep below a batch folder run folders are looked for
MAX_DEPTH = 4


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def href(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


# ---------------------------------------------------------------------------------------------------- reading a run
@dataclass
class RunSummary:
    """What a run page and a gallery card show (paths are inside the run folder, checked)."""

    run_dir: Optional[Path]
    error: Optional[str] = None
    prompt: str = ""
    name: str = ""
    step: int = -1
    max_steps: int = 0
    representation: str = ""
    prior: str = ""
    guidance: str = ""
    config_text: str = ""
    glb: Optional[Path] = None
    mp4: Optional[Path] = None
    preview: Optional[Path] = None
    renders: Optional[Path] = None
    metrics: dict = field(default_factory=dict)
    scores: Optional[dict] = None

    @property
    def thumbnail(self) -> Optional[Path]:
        return self.preview or self.renders


def _inside(run_dir: Path, path: Path) -> bool:
    """``path`` is a regular file whose real location is inside ``run_dir`` (links out of it are refused)."""
    try:
        return path.is_file() and path.resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return False


def _newest(run_dir: Path, folder: str, pattern: str) -> Optional[Path]:
    base = run_dir / folder
    if not base.is_dir():
        return None
    found = [p for p in base.glob(pattern) if _inside(run_dir, p)]
    return max(found, key=lambda p: (p.stat().st_mtime, p.name)) if found else None


def summarize_run(run_dir: Path, scores: Optional[dict] = None) -> RunSummary:
    """Read what a run folder holds; a folder that cannot be read gives a summary with ``error`` set."""
    from ..run import CONFIG_NAME, checkpoint_step, load_run

    summary = RunSummary(Path(run_dir), scores=scores)
    try:
        run_dir, cfg, _ = load_run(run_dir)
    except DreamkitError as err:
        summary.error = str(err)
        return summary
    summary.run_dir = run_dir
    text = (run_dir / CONFIG_NAME).read_text(encoding="utf-8", errors="replace")
    summary.config_text = text
    summary.prompt = str(cfg.get("prompt", ""))
    summary.name = str(cfg.get("name", ""))
    summary.max_steps = int(cfg.get("trainer", {}).get("max_steps", 0) or 0)
    summary.representation = str(cfg.get("representation", {}).get("name", ""))
    summary.prior = str(cfg.get("prior", {}).get("type", ""))
    summary.guidance = str(cfg.get("guidance", {}).get("name", ""))
    summary.step = checkpoint_step(run_dir)  # the safe loader; -1 without a readable checkpoint
    summary.glb = _newest(run_dir, "exports", "*.glb")
    summary.mp4 = _newest(run_dir, "exports", "turntable*.mp4")
    summary.preview = _newest(run_dir, "exports", "turntable*.png")
    summary.renders = _newest(run_dir, "renders", "step_*.png")
    from .metrics import read_metrics

    summary.metrics = read_metrics(run_dir)
    if summary.scores is None:
        summary.scores = eval_scores_of(run_dir)
    return summary


def _same_run(recorded: str, run_dir: Path, eval_dir: Path) -> bool:
    return resolve_run_dir(recorded, eval_dir) == run_dir.resolve()


def eval_scores_of(run_dir: Path) -> Optional[dict]:
    """The row of a ``dreamkit eval`` ``results.csv`` that scored this run (eval runs live in
    ``<eval>/runs/<name>/<run>``), or None."""
    for parent in list(run_dir.resolve().parents)[:3]:
        table = parent / "results.csv"
        if table.is_file():
            for row in _read_results(table):
                if row.get("run_dir") and _same_run(row["run_dir"], run_dir, parent):
                    return row
    return None


def _read_results(table: Path) -> list[dict]:
    try:
        with open(table, newline="", encoding="utf-8", errors="replace") as f:
            return [{k: (v or "") for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except (OSError, csv.Error):
        return []


def resolve_run_dir(recorded: str, eval_dir: Path) -> Optional[Path]:
    """A ``run_dir`` written in an eval's results.csv (absolute, or relative to where the eval ran) → the run folder:
    as written if it exists, else found by its last two parts under ``<eval>/runs`` (an eval folder that was moved
    or copied)."""
    path = Path(recorded).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return path.resolve()
    for candidate in (eval_dir / "runs" / Path(*path.parts[-2:]) if len(path.parts) >= 2 else None,
                      eval_dir / path):
        if candidate is not None and candidate.is_dir() and (candidate / "config.yaml").is_file():
            return candidate.resolve()
    return None


# ---------------------------------------------------------------------------------------------------- HTML pieces
CSS = """
:root { --fg:#1d2125; --muted:#5f6b76; --line:#dde2e7; --bg:#f6f7f9; --card:#fff; --ok:#2b8a3e; --bad:#c92a2a; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header, main, footer { max-width:1100px; margin:0 auto; padding:16px 20px; }
header h1 { margin:0 0 4px; font-size:26px; }
.muted { color:var(--muted); }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px;
          margin:0 0 16px; }
section h2 { margin:0 0 10px; font-size:17px; }
model-viewer { width:100%; height:480px; background:linear-gradient(#fdfdfd, #e4e8ec); border-radius:8px; }
.media { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
.media figure { margin:0; }
.media img, .media video, img.plot { max-width:100%; border:1px solid var(--line); border-radius:6px;
                                     image-rendering:auto; }
img.pixels { height:320px; width:auto; object-fit:contain; image-rendering:pixelated; }
figcaption { font-size:13px; color:var(--muted); }
pre { background:#f1f3f5; padding:10px 12px; border-radius:6px; overflow:auto; font-size:12.5px; max-height:520px; }
table { border-collapse:collapse; font-size:13px; }
td, th { border-bottom:1px solid var(--line); padding:3px 10px 3px 0; text-align:left; vertical-align:top; }
.ok { color:var(--ok); font-weight:600; } .bad { color:var(--bad); font-weight:600; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(230px, 1fr)); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; display:flex;
        flex-direction:column; }
.card a.thumb { display:block; background:#eef1f4; aspect-ratio:1/1; }
.card a.thumb img { width:100%; height:100%; object-fit:contain; display:block; }
.card .body { padding:8px 10px 10px; font-size:13px; }
.card .body h3 { margin:0 0 4px; font-size:15px; }
.card .none { display:flex; height:100%; align-items:center; justify-content:center; color:var(--muted); }
.warn { color:var(--bad); }
"""

MODEL_STATUS_JS = """
(function () {
  var viewer = document.getElementById('model');
  var status = document.getElementById('model-status');
  if (!viewer) { return; }
  viewer.addEventListener('load', function () { document.body.dataset.model = 'loaded'; status.textContent = ''; });
  viewer.addEventListener('error', function (event) {
    document.body.dataset.model = 'error';
    status.textContent = 'could not display the model (' + ((event.detail && event.detail.type) || 'error') + ')';
  });
  window.addEventListener('load', function () {
    if (!window.customElements || !customElements.get('model-viewer')) {
      status.textContent = 'the 3D viewer script (' + viewer.dataset.script + ') did not load';
    }
  });
})();
"""


def _page(title: str, body: str, head_extra: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
            f'<style>{CSS}</style>\n{head_extra}</head>\n<body>\n{body}\n'
            f'<footer class="muted">written by <code>dreamkit report</code> on {stamp} · opens offline</footer>\n'
            "</body>\n</html>\n")


def _format(value: Any) -> str:
    text = str(value)
    if text in ("True", "✓"):
        return '<span class="ok">✓</span>'
    if text in ("False", "✗"):
        return '<span class="bad">✗</span>'
    try:
        number = float(text)
        if "." in text and len(text) > 7:
            return esc(f"{number:.4g}")
    except ValueError:
        pass
    return esc(text)


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


# ---------------------------------------------------------------------------------------------------- a run page
def glb_is_animated(path: Path) -> bool:
    """Whether a GLB file has animations (its JSON chunk's ``animations``; read as data, never run)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"glTF":
                return False
            length, kind = struct.unpack("<I4s", head[12:20])
            if kind != b"JSON" or length > 64 << 20:
                return False
            return bool(json.loads(f.read(length)).get("animations"))
    except (OSError, ValueError):
        return False


def build_run_page(summary: RunSummary, dest: Path, script_href: str = MODEL_VIEWER,
                   back: Optional[tuple[str, str]] = None) -> None:
    """Write ``dest/index.html`` and the files it shows (copied into ``dest``) for one run. ``script_href``:
    where the page finds model-viewer (a gallery's sub-pages share one copy); ``back``: (href, label) of a link up."""
    from .plots import plot_losses, plot_metrics

    dest.mkdir(parents=True, exist_ok=True)
    s = summary
    parts = []
    crumbs = f'<p><a href="{back[0]}">← {esc(back[1])}</a></p>' if back else ""
    if s.error:
        name = s.run_dir.name if s.run_dir is not None else "run"
        body = (f"<header>{crumbs}<h1>{esc(name)}</h1></header>\n<main><section>"
                f'<p class="warn">{esc(s.error)}</p></section></main>')
        (dest / "index.html").write_text(_page(name, body), encoding="utf-8")
        return
    step = f"step {s.step} of {s.max_steps}" if s.step >= 0 else "no checkpoint yet"
    meta = " · ".join(esc(x) for x in (s.name, s.representation, s.guidance, f"{s.prior} prior", step,
                                       s.run_dir.name) if x)
    parts.append(f"<header>{crumbs}<h1>{esc(s.prompt)}</h1><p class=\"muted\">{meta}</p></header>\n<main>")

    if s.glb is not None:
        shutil.copyfile(s.glb, dest / s.glb.name)
        size = s.glb.stat().st_size
        if size <= MAX_EMBED_BYTES:
            src = "data:model/gltf-binary;base64," + base64.b64encode(s.glb.read_bytes()).decode("ascii")
            note = ""
        else:
            src = href(s.glb.name)
            note = (" — too large to embed in the page: it shows only when the folder is served over HTTP "
                    "(e.g. <code>python -m http.server</code> in this folder)")
        parts.append(
            '<section id="model-section"><h2>Exported mesh</h2>'
            f'<model-viewer id="model" src="{esc(src)}" data-script="{esc(script_href)}" camera-controls '
            + ("autoplay " if glb_is_animated(s.glb) else "")
            + 'environment-image="neutral" shadow-intensity="0.7" exposure="1" touch-action="pan-y" interaction-prompt="none" '
            f'alt="{esc(s.prompt)}"></model-viewer>'
            f'<p class="muted"><span id="model-status"></span> <a href="{href(s.glb.name)}" download>'
            f'{esc(s.glb.name)}</a> ({_size(s.glb)}) — its own material, lit by a neutral studio environment; drag '
            f"to turn, scroll to zoom{note}</p></section>")
    else:
        parts.append('<section id="model-section"><h2>Exported mesh</h2><p class="muted">no GLB in exports/ '
                     f'(add glb to export.formats, or: <code>dreamkit export {esc(s.run_dir)} --format glb</code>)'
                     "</p></section>")

    media = []
    if s.mp4 is not None:
        shutil.copyfile(s.mp4, dest / s.mp4.name)
        media.append(f'<figure><video src="{href(s.mp4.name)}" autoplay loop muted playsinline controls '
                     f'width="320"></video><figcaption>{esc(s.mp4.name)}: turntable of the fitted representation'
                     "</figcaption></figure>")
    if s.renders is not None:
        name = "renders_" + s.renders.name
        shutil.copyfile(s.renders, dest / name)
        media.append(f'<figure><img class="pixels" src="{href(name)}" alt="held-out renders">'
                     f"<figcaption>held-out orbit, {esc(s.renders.stem.replace('_', ' '))}</figcaption></figure>")
    if media:
        parts.append('<section id="renders"><h2>Renders</h2><div class="media">' + "".join(media) + "</div></section>")

    if s.scores:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_format(v)}</td></tr>" for k, v in s.scores.items()
                       if k != "run_dir" and str(v) != "")
        parts.append(f'<section id="scores"><h2>Eval scores</h2><table>{rows}</table></section>')

    plots = []
    if plot_losses(s.metrics, dest / "loss.png"):
        plots.append('<img class="plot" src="loss.png" alt="loss">')
    figure, left = plot_metrics(s.metrics, dest / "metrics.png")
    if figure:
        plots.append('<img class="plot" src="metrics.png" alt="metrics">')
    if left:
        plots.append(f'<p class="muted">not plotted: {esc(", ".join(left))}</p>')
    parts.append('<section id="plots"><h2>Training</h2>' + ("".join(plots) if plots else
                 '<p class="muted">no logged metrics (logs/metrics.csv)</p>') + "</section>")
    parts.append('<section id="config"><h2>Resolved config</h2><pre>' + esc(s.config_text) + "</pre></section>")
    parts.append("</main>")
    head = ""
    if s.glb is not None:
        head = f'<script src="{esc(script_href)}"></script>\n'
    body = "\n".join(parts) + (f"\n<script>{MODEL_STATUS_JS}</script>" if s.glb is not None else "")
    (dest / "index.html").write_text(_page(f"{s.prompt} — dreamkit", body, head), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- galleries
def _card(summary: RunSummary, page: Optional[str], thumb: Optional[str], title: str,
          scores: Optional[dict]) -> str:
    image = (f'<img src="{esc(thumb)}" alt="{esc(title)}" loading="lazy">' if thumb
             else '<div class="none">no render</div>')
    link = f'<a class="thumb" href="{esc(page)}">{image}</a>' if page else f'<div class="thumb">{image}</div>'
    lines = []
    if summary.error:
        lines.append(f'<span class="warn">{esc(summary.error)}</span>')
    else:
        lines.append(esc(" · ".join(x for x in (summary.name, summary.representation,
                                                 f"step {summary.step}" if summary.step >= 0 else "") if x)))
    if scores:
        if "ok" in scores and scores["ok"] != "":
            lines.append(f"verdict {_format(scores['ok'])}")
        picked = [(k, scores[k]) for k in ("nearest_shape", "colour", "fronts", "chamfer_norm", "iou_norm", "error")
                  if scores.get(k) not in (None, "")]
        lines.extend(f"{esc(k)} {_format(v)}" for k, v in picked)
    title_html = f'<a href="{esc(page)}">{esc(title)}</a>' if page else esc(title)
    return (f'<div class="card">{link}<div class="body"><h3>{title_html}</h3>'
            + "<br>".join(lines) + "</div></div>")


def _gallery_page(dest: Path, title: str, intro: str, entries: list[tuple[str, RunSummary, Optional[dict]]],
                  extra_sections: str = "") -> int:
    """Write one sub-page per entry (``runs/NN-slug/``) and the gallery ``index.html``; returns the page count."""
    from ..run import slugify

    shutil.copyfile(ASSETS / MODEL_VIEWER, dest / MODEL_VIEWER)
    cards = []
    for i, (label, summary, scores) in enumerate(entries):
        folder = f"{i + 1:02d}-{slugify(label, 40)}"
        sub = dest / "runs" / folder
        page = thumb = None
        if summary.error is None:
            build_run_page(summary, sub, script_href=f"../../{MODEL_VIEWER}", back=("../../index.html", title))
            page = href("runs", folder, "index.html")
            if summary.thumbnail is not None:
                name = "thumb" + summary.thumbnail.suffix
                shutil.copyfile(summary.thumbnail, sub / name)
                thumb = href("runs", folder, name)
        cards.append(_card(summary, page, thumb, label, scores))
    body = (f'<header><h1>{esc(title)}</h1><p class="muted">{intro}</p></header>\n<main>\n'
            f'<section id="gallery"><h2>{len(entries)} run(s)</h2><div class="grid">{"".join(cards)}</div></section>'
            f"\n{extra_sections}</main>")
    (dest / "index.html").write_text(_page(title, body), encoding="utf-8")
    return len(entries)


def build_eval_gallery(eval_dir: Path, dest: Path) -> None:
    """A card per row of ``results.csv`` (every prompt, in the table's order), each linking to its run page."""
    rows = _read_results(eval_dir / "results.csv")
    entries = []
    for row in rows:
        run = resolve_run_dir(row.get("run_dir", ""), eval_dir) if row.get("run_dir") else None
        if run is None:
            summary = RunSummary(None, error=f"run folder not found: {row.get('run_dir') or '(no run_dir)'}",
                                 scores=row)
        else:
            summary = summarize_run(run, scores=row)
        entries.append((row.get("prompt") or "?", summary, row))
    sections = []
    columns = [c for c in ("prompt", "kind", "ok", "nearest_shape", "colour", "hue_error", "fronts", "fronts_fit",
                           "chamfer_norm", "iou_norm", "fit_s", "error") if any(r.get(c) for r in rows)]
    if rows:
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_format(r.get(c, ''))}</td>" for c in columns) + "</tr>"
                       for r in rows)
        singles = [r for r in rows if r.get("kind") == "single"]
        verdict = ""
        if singles and any(r.get("ok") for r in singles):
            right = sum(1 for r in singles if r.get("ok") == "True")
            verdict = f"<p>verdict (ok): <b>{right}/{len(singles)}</b> single objects right</p>"
        sections.append(f'<section id="results"><h2>Results</h2>{verdict}<table><tr>{head}</tr>{body}</table>'
                        "</section>")
    sheet = eval_dir / "contact_sheet.png"
    if _inside(eval_dir, sheet):
        shutil.copyfile(sheet, dest / "contact_sheet.png")
        sections.append('<section id="contact"><h2>Contact sheet</h2><img class="plot" src="contact_sheet.png" '
                        'alt="contact sheet"></section>')
    title = f"dreamkit eval — {eval_dir.resolve().name}"
    intro = f"{len(rows)} prompt(s) from {esc(eval_dir / 'results.csv')}"
    _gallery_page(dest, title, intro, entries, "\n".join(sections))


def find_runs(folder: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """Run folders (with config.yaml) at most ``depth`` levels below ``folder``; links (``latest``), hidden folders
    and report folders are skipped, and a run folder's own subfolders are not searched."""
    found = []

    def walk(path: Path, level: int) -> None:
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or (child / MANIFEST).is_file():  # hidden, or a report folder
                continue
            if (child / "config.yaml").is_file():
                found.append(child)
            elif level < depth:
                walk(child, level + 1)

    walk(folder, 1)
    return found


def build_batch_gallery(folder: Path, runs: list[Path], dest: Path) -> None:
    entries = []
    for run in runs:
        summary = summarize_run(run)
        label = summary.prompt or run.name
        entries.append((label, summary, summary.scores))
    title = f"dreamkit runs — {folder.resolve().name}"
    _gallery_page(dest, title, f"{len(runs)} run folder(s) under {esc(folder)}", entries)


# ---------------------------------------------------------------------------------------------------- the folder
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"written_by": "dreamkit report", "files": files}, indent=1))


def is_untouched_report(folder: Path) -> bool:
    """``folder`` is a report that dreamkit wrote and nobody changed since: every file in it is listed in its
    manifest with the same SHA-256, and none is missing, added or a link."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(listed, dict):
        return False
    seen = set()
    for path in folder.rglob("*"):
        if path.is_symlink():
            return False
        if path.is_dir():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        if listed.get(rel) != _sha256(path):
            return False
        seen.add(rel)
    return seen == set(listed)


def _fresh_sibling(target: Path) -> Path:
    i = 1
    while True:
        candidate = target.with_name(f"{target.name}-{i}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        i += 1


def write_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a report into a temporary folder, then put it at ``target`` (replacing an untouched earlier report
    there), or beside it as ``target-N`` when ``target`` holds anything else. Returns the folder written."""
    target = Path(target)
    final = target
    if target.exists() or target.is_symlink():
        if not is_untouched_report(target):
            final = _fresh_sibling(target)
            print(f"{target} was not written by dreamkit report or was changed since: kept as it is; writing "
                  f"{final.name}/ instead", flush=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        _write_manifest(tmp)
        if final.exists():  # an untouched report of ours: swap it out, then remove it
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def kind_of(folder: Path) -> str:
    """run | eval | batch for a folder ``dreamkit report`` takes; DreamkitError for anything else."""
    from ..run import CONFIG_NAME

    if not folder.exists():
        raise DreamkitError(f"{folder} not found — pass a run folder (outputs/<name>/<prompt>@<time>), an eval "
                            "folder (dreamkit eval --out DIR) or a folder of runs (e.g. outputs/)")
    if not folder.is_dir():
        raise DreamkitError(f"{folder} is a file — pass a run folder, an eval folder or a folder of runs")
    if (folder / CONFIG_NAME).is_file():
        return "run"
    table = folder / "results.csv"
    if table.is_file():
        with open(table, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if "prompt" in header and "run_dir" in header:
            return "eval"
    if find_runs(folder):
        return "batch"
    raise DreamkitError(f"{folder} holds no run folder (a folder with {CONFIG_NAME}), eval results (results.csv) or "
                        f"run folders up to {MAX_DEPTH} levels below — pass a folder made by dreamkit fit or eval")


def write_report(folder: str | Path, out: Optional[str | Path] = None) -> Path:
    """The report of a run, eval or batch folder into ``out`` (default ``<folder>/report``); returns the path of
    its ``index.html``."""
    folder = Path(folder).expanduser()
    if folder.is_symlink() and folder.is_dir():  # outputs/<name>/latest
        folder = folder.resolve()
    kind = kind_of(folder)
    target = Path(out).expanduser() if out else folder / "report"
    if kind == "run":
        summary = summarize_run(folder)
        if summary.error:
            raise DreamkitError(summary.error)

        def build(dest: Path) -> None:
            build_run_page(summary, dest)
            if summary.glb is not None:
                shutil.copyfile(ASSETS / MODEL_VIEWER, dest / MODEL_VIEWER)
    elif kind == "eval":
        def build(dest: Path) -> None:
            build_eval_gallery(folder, dest)
    else:
        runs = find_runs(folder)

        def build(dest: Path) -> None:
            build_batch_gallery(folder, runs, dest)
    written = write_folder(target, build)
    return written / "index.html"
