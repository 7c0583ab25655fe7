"""Apply the world benchmark's verdict (dreamkit.eval.benchmark.verdict: shape, colour, size within 20%, square
sections for cubes and pyramids) to finished `dreamkit eval` folders, from their results.csv alone (no refit, no
re-export), and print both counts per folder.

    python scripts/verdict.py benchmarks/2026-12-04/*singles20*
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from dreamkit.eval.benchmark import verdict

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("| eval folder | shape + hue | verdict (size, sections too) | misses by the verdict |")
    print("|---|---|---|---|")
    for folder in args.folders:
        table = folder / "results.csv"
        if not table.is_file():
            continue
        rows = [r for r in csv.DictReader(open(table, newline="")) if r.get("kind") == "single"]
        if not rows:
            continue
        if "extent" not in rows[0]:
            print(f"| {folder} | — | (no extent column: re-score with `dreamkit eval --rescore`) | |")
            continue
        both = sum(r["shape_ok"] == "True" and r["colour_ok"] == "True" for r in rows)
        judged = [(r, verdict(r)) for r in rows]
        ok = sum(v["ok"] for _, v in judged)
        misses = "; ".join(f"{r['prompt']} ({'size ' + r['extent'] if not v['size_ok'] else ''}"
                           f"{' sections ' + r['sections'] if not v['sections_ok'] else ''}"
                           f"{' → ' + r['nearest_shape'] + ' ' + r['colour'] if v['size_ok'] and v['sections_ok'] else ''})"
                           for r, v in judged if not v["ok"])
        print(f"| {folder} | {both}/{len(rows)} | **{ok}/{len(rows)}** | {misses} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
