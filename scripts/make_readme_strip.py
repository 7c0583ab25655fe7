"""Compose the README's strip of real fits, docs/img/strip.png, from contact sheets already in benchmarks/.

Every tile is one 96×96 turntable frame of a fitted representation (3D Gaussians rendered by dreamkit, not an
export), cut out of a `dreamkit eval` contact sheet (8 frames per row, azimuth 0°, 45°, … 315° at elevation 15°;
one row per prompt, in the order of the eval's results.md). Nothing is fitted or rendered here: the script only
crops, scales and labels.

    python scripts/make_readme_strip.py            # writes docs/img/strip.png
    python scripts/make_readme_strip.py --out /tmp/strip.png --scale 1
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAME = 96  # side of one contact-sheet frame (dreamkit.eval.benchmark: render_turntable(..., resolution=96))

# (contact sheet, row, column = azimuth index k of k·45°, label). Rows follow each folder's results.md.
ASYM = "benchmarks/2026-12-03/eval_asym_mv_1000/seed0/contact_sheet.png"  # gs_sds_mv.yaml, asymmetric, seed 0
SINGLES = "benchmarks/2026-12-03/eval_singles20_mv_seed1/contact_sheet.png"  # gs_sds_mv.yaml, singles20, seed=1
COMPOSED = "benchmarks/2026-12-05/semantic_compositions8/alt_s0/contact_sheet.png"  # gs_semantic.yaml, seed 0
TILES = [
    (ASYM, 0, 1, "a house"),
    (ASYM, 1, 1, "a snowman"),
    (ASYM, 2, 0, "a mug"),
    (ASYM, 3, 1, "a car"),
    (SINGLES, 3, 1, "a yellow cone"),
    (SINGLES, 5, 0, "an orange pyramid"),
    (COMPOSED, 7, 0, "cube on a torus"),
    (COMPOSED, 4, 0, "cube by a capsule"),
]


def main(argv: list[str] | None = None) -> int:
    from PIL import Image, ImageDraw, ImageFont

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "strip.png")
    parser.add_argument("--scale", type=float, default=4 / 3, help="tile size = 96 × scale pixels (default 128)")
    args = parser.parse_args(argv)

    side = round(FRAME * args.scale)
    label_h = 22
    font = ImageFont.load_default(size=13)
    sheets: dict[str, Image.Image] = {}
    strip = None
    for i, (sheet, row, col, label) in enumerate(TILES):
        if sheet not in sheets:
            sheets[sheet] = Image.open(ROOT / sheet).convert("RGB")
        img = sheets[sheet]
        box = (col * FRAME, row * FRAME, (col + 1) * FRAME, (row + 1) * FRAME)
        if box[2] > img.width or box[3] > img.height:
            raise SystemExit(f"{sheet}: frame ({row}, {col}) is outside the {img.width}×{img.height} sheet")
        tile = img.crop(box).resize((side, side), Image.LANCZOS)
        if strip is None:
            bg = img.getpixel((2, 2))  # the runs' solid background
            strip = Image.new("RGB", (side * len(TILES), side + label_h), bg)
        strip.paste(tile, (i * side, 0))
        draw = ImageDraw.Draw(strip)
        w = draw.textlength(label, font=font)
        draw.text((i * side + (side - w) / 2, side + 3), label, fill=(40, 40, 40), font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(args.out, optimize=True)
    print(f"wrote {args.out} ({strip.width}×{strip.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
