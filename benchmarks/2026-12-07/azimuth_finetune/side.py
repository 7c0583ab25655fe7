"""The fit beside the truth: python side.py "<run folder glob>" out.png <shape> <colour> (rows elevation 0, 20, 40°;
columns truth, fit at azimuth 0°, then at 30°; distance 2.75, fovy 40°, 128²)."""
import sys, glob, torch, numpy as np
from PIL import Image
from dreamkit.cameras import cameras_from_spherical
from dreamkit.components import load_representation_from_checkpoint
from dreamkit.run import load_run
from dreamkit.world.scenes import single_scene
from dreamkit.world.dataset import render_scene_views
rd = glob.glob(sys.argv[1])[0]
_, cfg, ck = load_run(rd)
rep = load_representation_from_checkpoint(cfg, ck, torch.device("cpu"))
scene = single_scene(sys.argv[3], sys.argv[4])
R = 128; rows = []
for el in (0, 20, 40):
    row = []
    for az in (0, 30):
        cam = cameras_from_spherical(torch.tensor([float(el)]), torch.tensor([float(az)]), torch.tensor([2.75]), torch.tensor([40.0]), R, R)
        with torch.no_grad():
            fit = rep.render(cam, background=torch.full((1, 3), 0.9)).rgb[0].clamp(0, 1).numpy()
        gt = render_scene_views(scene, cam)[0][0].clamp(0, 1).numpy()
        row += [gt, fit]
    rows.append(np.concatenate(row, 1))
Image.fromarray((np.concatenate(rows, 0) * 255).astype(np.uint8)).save(sys.argv[2])
