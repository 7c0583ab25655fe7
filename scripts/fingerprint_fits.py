"""Fingerprints of short fits: a refactor that must change no number is checked by running this before and after.

Fits each recipe for a few steps through the CLI (densifying every 10 steps where the recipe densifies) and prints
the sha256 of every parameter of the final checkpoint and of its metrics.csv:

    python scripts/fingerprint_fits.py /tmp/fp_before            # on the old commit
    python scripts/fingerprint_fits.py /tmp/fp_after             # on the new one: the same hashes
    python scripts/fingerprint_fits.py /tmp/fp gs_sds gs_vsd     # some recipes only
"""
import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamkit.checkpoint import load_checkpoint

RUNS = {
 "gs_sds": ["trainer.max_steps=40", "representation.densify.refine_start=10", "representation.densify.refine_every=10"],
 "gs_sds32": ["trainer.max_steps=40", "representation.densify.refine_start=10", "representation.densify.refine_every=10"],
 "gs_vsd": ["trainer.max_steps=30", "representation.densify.refine_start=10", "representation.densify.refine_every=10"],
 "gs_asd": ["trainer.max_steps=30"],
 "gs_sds_mv": ["trainer.max_steps=20"],
 "gs_oracle": ["trainer.max_steps=30", "representation.densify.refine_start=10", "representation.densify.refine_every=10"],
 "nerf_oracle": ["trainer.max_steps=10"],
}


def main() -> int:
    which = sys.argv[2:] or list(RUNS)
    out = Path(sys.argv[1]); out.mkdir(exist_ok=True)
    for name in which:
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        cmd = [sys.executable, "-m", "dreamkit", "fit", "--config", f"configs/{name}.yaml", "--no-export", f"output_dir={d}",
               *RUNS[name], "trainer.val_every=0", "trainer.log_every=5"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(name, "FAILED", r.stderr[-2000:]); continue
        ckf = sorted(d.rglob("last.ckpt"))[0]
        ck = load_checkpoint(ckf)  # weights only: nothing in the file runs
        h = hashlib.sha256()
        for k in sorted(ck["state_dict"]):
            h.update(k.encode()); h.update(ck["state_dict"][k].float().numpy().tobytes())
        met = sorted(d.rglob("metrics.csv"))
        mh = hashlib.sha256(met[0].read_bytes()).hexdigest()[:12] if met else "-"
        losses = [row.get("train/loss") for row in csv.DictReader(open(met[0]))] if met else []
        print(name, h.hexdigest()[:16], "metrics", mh, "losses", [l for l in losses if l][:3], [l for l in losses if l][-1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
