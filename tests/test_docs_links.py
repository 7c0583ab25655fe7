"""The README and docs/: every relative link and image points at a file that exists (and, for a `page.md#anchor`
link, at a heading that exists); the README stays a short front door whose setup and test commands are the ones CI
runs. Text only: no imports of dreamkit, well under a second."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

pytestmark = pytest.mark.skipif(not (ROOT / "docs").is_dir() or not (ROOT / "benchmarks").is_dir(),
                                reason="not a source checkout (docs/ and benchmarks/ are not in the sdist)")

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The page without fenced code blocks and code spans (a `](` there is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:|#|/", t)]


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in _relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve()
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_checker_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n[x](a.md) ![i](img/s.png) [w](https://e.org) [h](#a-title)\n"
                    "`[not](a_link.md)`\n```\n[nor](this.md)\n```\n", encoding="utf-8")
    assert _relative_links(page) == ["a.md", "img/s.png"]
    assert _anchors(page) == {"a-title"}


def test_readme_is_a_short_front_door_with_the_ci_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) < 150
    first_screen = "\n".join(readme[:40])
    assert "docs/img/strip.png" in first_screen
    setup = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
             'pip install -e ".[dev,viewer,scale]" && npm ci')
    test = ". .venv/bin/activate && python -m pytest -q"
    assert setup in first_screen and test in first_screen
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace(" -q ", " ")
    assert setup.removesuffix(" && npm ci") in ci and "npm ci" in ci and test in ci
