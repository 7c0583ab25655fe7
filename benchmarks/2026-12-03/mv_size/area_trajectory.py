"""Object area in a run's held-out renders over its steps: pixels of renders/step_*.png (grids of 32² views) whose
colour differs from the 0.9 grey background by more than 0.1 in some channel, summed over the 8 views.
Usage: python area_trajectory.py RUN_DIR [RUN_DIR ...]   (runs fitted with trainer.val_every=50)"""
import glob
import sys

import imageio.v3 as iio
import numpy as np

for run in sys.argv[1:]:
    out = []
    for f in sorted(glob.glob(run + "/renders/step_*.png")):
        im = iio.imread(f)[..., :3] / 255.0
        out.append((int(f[-10:-4]), int((np.abs(im - 0.9).max(-1) > 0.1).sum())))
    print(run.rstrip("/").split("/")[-2], " ".join(f"{s}:{a}" for s, a in out))
