"""Measure what the live viewer costs a fit: steps/s without the viewer, with it and no browser, and with a headless
Chromium connected — idle, or dragging the camera every 3 s, also at nice 19 (a browser on the same CPU competes
with the fit for it; a browser on another machine does not) (docs/viewer.md quotes the numbers).

    python scripts/viewer_overhead.py --config gs_sds.yaml --steps 300 --repeats 2

Each fit runs as its own ``dreamkit fit`` process; steps/s is read from its last line ``trained N steps in X s``
(training time only: start-up and exports excluded). The variants alternate (A, B, C, A, B, C, …) so a machine
whose load drifts biases none of them. Needs the viewer extra and Chromium + Playwright for the browser variant.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def chromium_cpu_seconds() -> float:
    """CPU seconds used so far by every running Chromium process (Linux /proc; ours are the only ones here)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = open(stat).read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        if name.startswith("chrom"):
            fields = text[text.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def run_fit(config: str, steps: int, out: str, viewer: bool, browser: str, extra: list[str]) -> tuple[float, str]:
    """One fit; ``browser``: "" (none), "idle" (connected), "drag" (drags the camera every 3 s) or "drag-nice" (the
    same with the browser at the lowest CPU priority, as a browser on another machine would be)."""
    cmd = [sys.executable, "-m", "dreamkit", "fit", "--config", config, f"trainer.max_steps={steps}",
           f"output_dir={out}", "trainer.progress=false", "--no-export", "report=false", *extra]
    if viewer:
        cmd += ["viewer=true", "viewer_port=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    url_ready = threading.Event()
    url: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = re.match(r"viewer: (http://\S+)", line)
            if match:
                url.append(match.group(1))
                url_ready.set()
        url_ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    note = ""
    if browser:
        url_ready.wait(120)
        if url:
            note = drive_browser(url[0], proc, drag=browser.startswith("drag"), nice=browser.endswith("nice"))
    proc.wait()
    reader.join(5)
    text = "".join(lines)
    match = re.search(r"trained (\d+) steps.* in ([\d.]+)s", text)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"fit failed ({proc.returncode}):\n{text[-3000:]}")
    renders = re.search(r"viewer: (\d+) render\(s\) in ([\d.]+) s \(([\d.]+%)", text)
    if renders:
        note = f"{renders.group(1)} renders, {renders.group(2)} s ({renders.group(3)} of training)" + \
            (f"; {note}" if note else "")
    return int(match.group(1)) / float(match.group(2)), note


def drive_browser(url: str, proc: subprocess.Popen, drag: bool = True, nice: bool = False) -> str:
    """Open the viewer in headless Chromium and (``drag``) drag the camera every 3 s until the fit ends; returns
    the CPU seconds the browser used meanwhile. ``nice``: the browser runs at nice 19."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if nice:
        wrapper = os.path.join(tempfile.mkdtemp(), "chromium-nice")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec nice -n 19 {exe} "$@"\n')
        os.chmod(wrapper, 0o755)
        exe = wrapper
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        cpu0, t0 = chromium_cpu_seconds(), time.time()
        try:
            page.goto(url)
            sign = 1
            while proc.poll() is None:
                if not drag:
                    page.wait_for_timeout(500)
                    continue
                page.mouse.move(300, 330)
                page.mouse.down()
                for i in range(1, 11):
                    page.mouse.move(300 + sign * 15 * i, 330)
                    page.wait_for_timeout(20)
                page.mouse.up()
                sign = -sign
                page.wait_for_timeout(3000)
        except Exception:  # the server went away when the fit ended
            pass
        cpu, wall = chromium_cpu_seconds() - cpu0, time.time() - t0
        browser.close()
    return f"browser CPU {cpu:.0f} s in {wall:.0f} s ({cpu / max(wall, 1e-9):.2f} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gs_sds.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="none,viewer,idle,drag,drag-nice",
                        help="comma-separated: none, viewer (no browser), idle, drag, drag-nice")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every fit")
    args = parser.parse_args()
    known = {"none": ("no viewer", False, ""), "viewer": ("viewer, no browser", True, ""),
             "idle": ("viewer + browser, idle", True, "idle"), "drag": ("viewer + browser dragging", True, "drag"),
             "drag-nice": ("viewer + browser dragging (nice 19)", True, "drag-nice")}
    variants = {known[v][0]: known[v][1:] for v in args.variants.split(",")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for name, (viewer, browser) in variants.items():
                t0 = time.time()
                rate, note = run_fit(args.config, args.steps, out, viewer, browser, list(args.overrides))
                rates[name].append(rate)
                print(f"[{r + 1}/{args.repeats}] {name}: {rate:.2f} steps/s ({time.time() - t0:.0f} s)"
                      + (f"  [{note}]" if note else ""), flush=True)
    base = statistics.median(next(iter(rates.values())))
    print(f"\n{args.config}, {args.steps} steps, {args.repeats} run(s) each, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, median steps/s:")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:<38} {med:6.2f}  ({med / base:.0%})  runs: {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
