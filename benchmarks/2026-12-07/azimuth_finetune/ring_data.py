"""The training images of "a red ring" in a rendered dataset, with their azimuths (the world's ring stands in the XY
plane: face-on near 0° and 180°, edge-on near ±90°).  python ring_data.py <work>/data out.png"""
import json
import sys

import numpy as np
import torch
from PIL import Image

data, out = sys.argv[1], sys.argv[2]
meta = json.load(open(f"{data}/captions.json"))
shard = torch.load(f"{data}/{meta['shards'][0]['file']}", weights_only=True)
captions = meta["captions"]
idx = [i for i in range(len(shard["caption"])) if captions[int(shard["caption"][i])] == "a red ring"][:12]
for i in idx:
    print(f"image {i}: azimuth {float(shard['azimuth'][i]):7.1f}°, elevation {float(shard['elevation'][i]):5.1f}°")
Image.fromarray(np.concatenate([shard["images"][i].numpy() for i in idx], 1)).save(out)
