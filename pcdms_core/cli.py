"""Command line: ``python -m pcdms_core generate | convert | inspect``.

    python -m pcdms_core generate --source person.png --source-pose person.json --target-pose pose.json \\
        --prior s1_512.pt --inpaint s2_512.pt --refine s3_512.pt \\
        --clip CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors --dino dinov2-giant/ --vae sd21-base-vae/ \\
        --out result.png
    python -m pcdms_core convert s2_512.pt s2_512.safetensors
    python -m pcdms_core inspect s2_512.pt PCDMs_ckpt.pt
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import bundled
from .errors import PCDMsError, reported_warnings
from .stages.defaults import DEFAULTS
from .stages.loop import PRIOR_SCHEDULERS, UNET_SCHEDULERS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", " ").split()
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pcdms_core", description="PCDMs: put a person into a new pose.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="run the stages on a source image and two poses, write PNGs")
    g.add_argument("--source", help="source person image (default, with no poses given: the bundled example)")
    g.add_argument("--source-pose", help="source pose: POSE_KEYPOINT/OpenPose .json or DeepFashion .txt")
    g.add_argument("--target-pose", help="target pose: .json / .txt keypoints, or a skeleton image (.png/.jpg; "
                   "no-prior checkpoint only)")
    g.add_argument("--person", default="largest", help="which person of a multi-person pose: an index or 'largest'")
    g.add_argument("--inpaint", help="stage-2 checkpoint (paper s2_*.pt or no-prior PCDMs_ckpt.pt, or .safetensors); "
                   "without it the bundled demo models are used")
    g.add_argument("--prior", help="stage-1 checkpoint (needed by the paper stage 2)")
    g.add_argument("--refine", help="stage-3 checkpoint (optional)")
    g.add_argument("--clip", help="CLIP ViT-H/14 vision model (file or transformers folder; needed with --prior)")
    g.add_argument("--dino", help="DINOv2-giant (file or transformers folder)")
    g.add_argument("--vae", help="SD 2.1-base VAE (diffusers folder or single file)")
    g.add_argument("--prior-config", help="config.json for a non-official-size prior")
    g.add_argument("--inpaint-config", help="config.json for a non-official-size stage-2 UNet")
    g.add_argument("--refine-config", help="config.json for a non-official-size stage-3 UNet")
    g.add_argument("--out", required=True, help="output PNG; with several images _1, _2, ... are appended")
    g.add_argument("--coarse-out", help="also write stage 2's coarse image here")
    g.add_argument("--size", type=_size, help="working size per half, N or WxH (default 512; 64 for the demo models)")
    g.add_argument("--prior-size", type=_size, help="CLIP input stretch for the prior (default: the working size)")
    g.add_argument("--keep-square", action="store_true", help="write the working size instead of the source's aspect")
    g.add_argument("--seed", type=int, default=42, help="each stage's generator starts from it (default: %(default)s)")
    g.add_argument("--num-images", type=int, default=1, help="images per source (default: %(default)s)")
    official = {"prior": DEFAULTS["prior"], "inpaint": DEFAULTS["paper"], "refine": DEFAULTS["refine"]}
    for stage, d in official.items():
        noprior = f"; no-prior checkpoint {DEFAULTS['noprior'].steps}" if stage == "inpaint" else ""
        demo = "" if stage == "prior" else f"; the demo models: {bundled.SAMPLING[stage]['steps']}"
        g.add_argument(f"--{stage}-steps", type=int, help=f"default: official {d.steps}{noprior}{demo}")
        demo = "" if stage == "prior" else f"; the demo models: {bundled.SAMPLING[stage]['guidance_scale']:g}"
        g.add_argument(f"--{stage}-guidance", type=float, help=f"default: official {d.guidance_scale:g}{demo}")
        noprior = f"; no-prior checkpoint {DEFAULTS['noprior'].scheduler}" if stage == "inpaint" else ""
        demo = "" if stage == "prior" else f"; the demo models: {bundled.SAMPLING[stage]['scheduler']}"
        choices = PRIOR_SCHEDULERS if stage == "prior" else UNET_SCHEDULERS
        g.add_argument(f"--{stage}-scheduler", choices=choices,
                       help=f"one of {', '.join(choices)} (default: official {d.scheduler}{noprior}{demo})")
    g.add_argument("--refine-strength", type=float,
                   help="stage 3 from the coarse image noised this far (img2img; default 1: from pure noise, as "
                        "officially)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    g.add_argument("--quiet", action="store_true")

    c = sub.add_parser("convert", help="official .pt to .safetensors (stage, variant and config in the metadata)")
    c.add_argument("src")
    c.add_argument("dst", nargs="?")
    c.add_argument("--config", help="config.json for a non-official-size network")
    c.add_argument("--dtype", choices=["keep"] + sorted(DTYPES), default="keep")

    t = sub.add_parser("train", help="train a stage (or the demo VAE) on the synthetic set or a DeepFashion folder")
    t.add_argument("stage", choices=["vae", "prior", "inpaint", "refine"])
    t.add_argument("--out", required=True, help="run folder: checkpoints, loss log, the trained model")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, help="default: the official learning rate of the stage")
    t.add_argument("--variant", choices=["paper", "noprior"], default="paper", help="inpainting with or without the prior")
    t.add_argument("--size", type=_size, help="working size per half (default: the demo models' 64)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", choices=["synthetic", "deepfashion"], default="synthetic")
    t.add_argument("--pairs", help="DeepFashion: train_data.json")
    t.add_argument("--images", help="DeepFashion: the image folder (train_all_png)")
    t.add_argument("--poses", help="DeepFashion: normalized_pose_txt")
    t.add_argument("--pose-images", help="DeepFashion: openpose_all_img (optional; rendered from keypoints otherwise)")
    t.add_argument("--vae", help="frozen VAE (default: the demo VAE)")
    t.add_argument("--clip", help="frozen CLIP (default: the demo stand-in)")
    t.add_argument("--dino", help="frozen DINOv2 (default: the demo stand-in)")
    t.add_argument("--init", help="start from this checkpoint (refining: a stage-2 checkpoint works too: its UNet and "
                   "projector start the refining model, as the official stage 3 starts from SD 2.1's UNet)")
    t.add_argument("--coarse", help="refining: the stage-2 outputs from make-coarse")
    t.add_argument("--augment", action="store_true",
                   help="refining: flip and reorder the colours of each (source, coarse, target) triple together")
    t.add_argument("--degrade", type=float, default=0.0, metavar="SHARE",
                   help="refining: this share of each batch (0-1) takes fresh synthetic pairs whose coarse image is "
                        "the target made worse the ways stage 2 makes it (off by default)")
    t.add_argument("--pool", type=int, default=0, metavar="N",
                   help="inpainting, VAE: draw the pairs from the first N (shuffled each pass) and keep their frozen "
                        "encodings (VAE: their renderings) instead of drawing fresh pairs every step (faster; 0, the "
                        "default, is fresh pairs)")
    t.add_argument("--decoder-only", action="store_true",
                   help="VAE: fine-tune only the decoder of the --init VAE, so models trained on its latents still fit")
    t.add_argument("--save-every", type=int, default=250)
    t.add_argument("--ema", type=float, default=0.0,
                   help="export an exponential moving average of the weights with this decay (e.g. 0.999; off by default, as officially)")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    t.add_argument("--export", help="also write the trained model here (e.g. pcdms_core/demo_models/pcdms/...)")
    t.add_argument("--export-dtype", choices=["fp16", "bf16", "fp32"], default="fp16")

    mc = sub.add_parser("make-coarse", help="stage-2 outputs on training pairs, for training stage 3")
    mc.add_argument("--inpaint", required=True)
    mc.add_argument("--out", required=True)
    mc.add_argument("--count", type=int, default=2000)
    mc.add_argument("--steps", type=int, default=10)
    mc.add_argument("--scheduler", help="stage 2's sampler (default: the official one for the model's variant)")
    mc.add_argument("--guidance", type=float, help="stage 2's guidance (default: the official 2)")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument("--batch-size", type=int, default=32)
    mc.add_argument("--prior", help="paper model: give stage 2 this prior's embedding instead of the real target "
                                    "one (as at inference; the official batch test uses the real one)")
    for name in ("vae", "clip", "dino"):
        mc.add_argument(f"--{name}", help=f"frozen {name} (default: the demo model); the one stage 2 was trained with")

    ie = sub.add_parser("init-encoders", help="write the demo's stand-in CLIP and DINOv2 (seeded, frozen)")
    ie.add_argument("--clip", required=True)
    ie.add_argument("--dino", required=True)

    ev = sub.add_parser("evaluate", help="the stage ablation on held-out synthetic pairs: SSIM, colour error, grid")
    ev.add_argument("--out", required=True, help="folder for results.json, results.md and grid.png")
    ev.add_argument("--pairs", type=int, default=200)
    ev.add_argument("--batch-size", type=int, default=25)
    ev.add_argument("--steps", type=int, help="sampling steps of stages 2 and 3 (default: the demo models' settings)")
    for stage in ("inpaint", "refine"):
        ev.add_argument(f"--{stage}-scheduler", help="default: the demo models' settings (pcdms_core.bundled.SAMPLING)")
        ev.add_argument(f"--{stage}-guidance", type=float)
    ev.add_argument("--refine-strength", type=float, help="stage 3's img2img strength (1: from pure noise)")
    ev.add_argument("--inpaint-noprior", help="a stage-2 model without the prior, scored too (default: the demo one)")
    for name in ("prior", "inpaint", "refine", "clip", "dino", "vae"):
        ev.add_argument(f"--{name}", help=f"{name} model (default: the demo model)")

    i = sub.add_parser("inspect", help="say what a PCDMs checkpoint is")
    i.add_argument("files", nargs="+")
    i.add_argument("--config", help="config.json to resolve against")
    return p


def _progress(quiet: bool):
    if quiet:
        return None
    last = {"stage": None, "t": time.time()}

    def report(stage: str, info) -> None:
        if stage != last["stage"]:
            last["stage"], last["t"] = stage, time.time()
        end = "\n" if info.step + 1 == info.total else ""
        print(f"\r{stage}: step {info.step + 1}/{info.total} ({time.time() - last['t']:.1f} s)", end=end,
              file=sys.stderr, flush=True)

    return report


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise PCDMsError(f"{what} not found: {p}")
    if p.is_dir():
        raise PCDMsError(f"{what} {p} is a folder; give a file")
    return p


def _open_image(path: str, what: str):
    from PIL import Image, UnidentifiedImageError

    p = _existing_file(path, what)
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy()  # in its own mode: images.as_uint8_batch converts 16-bit, palette, CMYK ... right
    except (UnidentifiedImageError, OSError) as exc:
        raise PCDMsError(f"{what} {p} is not an image PIL can read ({exc})") from None


def _load_any_pose(path: str, person, what: str):
    """Keypoints (.json / .txt / .csv) as a ``Pose``; for the target, a skeleton image too."""
    from .images import as_uint8_batch
    from .pose.keypoints import load_pose

    p = _existing_file(path, what)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        if what == "source pose":
            raise PCDMsError(
                f"the source pose {p.name} is an image: give the source person's keypoints (.json / .txt), for "
                "example from comfyui_controlnet_aux's DWPose node or OpenPose's --write_json"
            )
        return as_uint8_batch(_open_image(path, what))
    return load_pose(p, person=person)


def _cpu_speed_up(model: torch.nn.Module) -> torch.nn.Module:
    from .cpu import speed_up

    return speed_up(model)


def _generate(args) -> int:
    from PIL import Image

    from . import images as im
    from .pipeline import PCDMsPipeline, StageSettings
    from .pose.keypoints import Pose

    person = int(args.person) if args.person.lstrip("-").isdigit() else args.person
    inputs = ("source", "source_pose", "target_pose")
    given = [getattr(args, k) is not None for k in inputs]
    if not any(given):  # the bundled example: the person and poses the demo models were evaluated on
        for k in inputs:
            setattr(args, k, str(bundled.example_file(k)))
    elif not all(given):
        missing = ", ".join("--" + k.replace("_", "-") for k, g in zip(inputs, given) if not g)
        raise PCDMsError(f"give {missing} too (or none of --source, --source-pose, --target-pose for the bundled example)")
    if args.inpaint is None:
        if not bundled.has_demo_models():
            raise PCDMsError(f"no --inpaint checkpoint given and the demo models are missing from {bundled.DEMO_DIR}")
        for name in ("prior", "inpaint", "refine", "clip", "dino", "vae"):
            if getattr(args, name) is None:
                setattr(args, name, str(bundled.demo_file(name)))
    if bundled.is_demo_file(args.inpaint):  # the demo models bring their own working size and sampler settings
        args.size = args.size or bundled.SIZE
        for stage, settings in bundled.SAMPLING.items():  # unless given on the command line
            for key, arg in (("steps", "steps"), ("guidance_scale", "guidance"), ("scheduler", "scheduler"),
                             ("strength", "strength")):
                if key in settings and getattr(args, f"{stage}_{arg}") is None:
                    setattr(args, f"{stage}_{arg}", settings[key])
    if args.dino is None or args.vae is None:
        raise PCDMsError("with --inpaint, also give --dino and --vae (and --prior and --clip for the paper model)")
    # every input is read before any model loads, so a wrong path costs nothing
    source = _open_image(args.source, "source image")
    source_pose = _load_any_pose(args.source_pose, person, "source pose")
    target_pose = _load_any_pose(args.target_pose, person, "target pose")
    for name in ("inpaint", "prior", "refine", "clip", "dino", "vae"):  # files, or folders for some
        if getattr(args, name) and not Path(getattr(args, name)).exists():
            raise PCDMsError(f"--{name} model not found: {getattr(args, name)}")
    # what the stage-2 file is, and every setting, before any model loads
    from .loading.checkpoints import inspect_checkpoint
    from .pipeline import warn_unused_prior
    from .stages.loop import check_stage_settings

    variant = inspect_checkpoint(args.inpaint, config=args.inpaint_config).variant
    if variant == "noprior" and (args.prior or args.clip):
        warn_unused_prior(Path(args.inpaint).name)
        args.prior = args.clip = None
    if variant == "paper" and not (args.prior and args.clip):
        raise PCDMsError(
            f"{Path(args.inpaint).name} is the paper stage-2 checkpoint, which needs the stage-1 prior and CLIP "
            "ViT-H/14: give --prior and --clip (or use the no-prior stage-2 checkpoint, PCDMs_ckpt.pt, which needs "
            "neither)"
        )
    stages = [("prior", "prior")] * bool(args.prior) + [("inpaint", variant)] + [("refine", "refine")] * bool(args.refine)
    for stage, kind in stages:
        check_stage_settings(kind, steps=getattr(args, f"{stage}_steps"), guidance_scale=getattr(args, f"{stage}_guidance"),
                             scheduler=getattr(args, f"{stage}_scheduler"), num_images=args.num_images, seed=args.seed,
                             strength=args.refine_strength if stage == "refine" else None)
    if args.prior and not isinstance(target_pose, Pose):
        raise PCDMsError(
            f"the target pose {args.target_pose} is a skeleton image, but the prior (the paper path) needs "
            "keypoints: give the target pose as a .json / .txt keypoint file, or use the no-prior checkpoint "
            "(PCDMs_ckpt.pt), which reads skeleton images"
        )
    args.size = im.check_size(args.size or (512, 512), 8, "--size")
    args.prior_size = im.check_size(args.prior_size or args.size, 8, "--prior-size")
    im.warn(im.size_warnings(source.size, args.size, "source image"))
    configs = {"prior": args.prior_config, "inpaint": args.inpaint_config, "refine": args.refine_config}
    pipe = PCDMsPipeline.from_files(
        inpaint=args.inpaint, vae=args.vae, dino=args.dino, prior=args.prior, clip=args.clip, refine=args.refine,
        configs={k: v for k, v in configs.items() if v}, dtype=DTYPES[args.dtype], device=args.device,
        prepare=_cpu_speed_up if torch.device(args.device or "cpu").type == "cpu" else None,
    )
    result = pipe(
        source,
        source_pose,
        target_pose,
        size=args.size,
        prior_size=args.prior_size,
        seed=args.seed,
        num_images=args.num_images,
        prior_settings=StageSettings(args.prior_steps, args.prior_guidance, args.prior_scheduler),
        inpaint_settings=StageSettings(args.inpaint_steps, args.inpaint_guidance, args.inpaint_scheduler),
        refine_settings=StageSettings(args.refine_steps, args.refine_guidance, args.refine_scheduler,
                                      strength=args.refine_strength),
        callback=_progress(args.quiet),
    )

    def write(batch: torch.Tensor, out: str) -> None:
        out_path = Path(out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        pictures = im.to_pil(batch)
        for k, pic in enumerate(pictures):
            if not args.keep_square:
                pic = pic.resize(source.size, Image.BICUBIC)
            target = out_path if len(pictures) == 1 else out_path.with_name(f"{out_path.stem}_{k + 1}{out_path.suffix}")
            pic.save(target)
            print(target)

    write(result.images, args.out)
    if args.coarse_out:
        write(result.coarse, args.coarse_out)
    return 0


def _convert(args) -> int:
    from .loading.checkpoints import convert_checkpoint

    dtype = None if args.dtype == "keep" else DTYPES[args.dtype]
    print(convert_checkpoint(args.src, args.dst, config=args.config, dtype=dtype))
    return 0


def _describe_other(path: str) -> Optional[str]:
    """A few lines for a model file that is not a PCDMs stage: an image encoder or a VAE (None: neither)."""
    from .loading.encoders import sniff_encoder_kind
    from .loading.vae import looks_like_vae
    from .loading.weights import open_weights

    weights = open_weights(path)
    keys = list(weights)
    kind = sniff_encoder_kind(keys)
    what = {"clip": "CLIP vision model (transformers layout): the prior's image encoder, give it as --clip",
            "openclip": "CLIP vision model (OpenCLIP layout): the prior's image encoder, give it as --clip",
            "dinov2": "DINOv2 model: the image encoder of stages 2 and 3, give it as --dino"}.get(kind)
    if what is None and looks_like_vae(keys):
        what = "VAE (AutoencoderKL): the latent codec of stages 2 and 3, give it as --vae"
    if what is None:
        return None
    count = sum(math.prod(int(s) for s in weights.shapes[k]) for k in keys)
    return f"file:       {path}\nformat:     {weights.format}\nmodel:      {what}\ntensors:    {len(keys)} ({count:,} values)"


def _inspect(args) -> int:
    """Describe each file; a file that is not a PCDMs stage is described as what it is, and the rest go on."""
    from .loading.checkpoints import describe, inspect_checkpoint

    failed = 0
    for k, f in enumerate(args.files):
        if k:
            print()
        try:
            print(describe(inspect_checkpoint(f, config=args.config)))
        except PCDMsError as exc:
            other = None
            try:
                other = _describe_other(f)
            except PCDMsError:
                pass
            if other is None:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
            else:
                print(other)
    return 2 if failed else 0


def _train(args) -> int:
    from .train.training import TrainConfig, train

    cfg = TrainConfig(
        stage=args.stage, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, variant=args.variant,
        size=tuple(args.size or bundled.SIZE), seed=args.seed, data=args.data, pairs=args.pairs, images=args.images, poses=args.poses,
        pose_images=args.pose_images, vae=args.vae, clip=args.clip, dino=args.dino, init=args.init, coarse=args.coarse,
        augment=args.augment, degrade=args.degrade, decoder_only=args.decoder_only, pool=args.pool, save_every=args.save_every,
        ema=args.ema, mixed_precision=args.mixed_precision,
        export_to=args.export, export_dtype=args.export_dtype,
    )
    print(train(cfg))
    return 0


def _make_coarse(args) -> int:
    from .train.training import make_coarse

    print(make_coarse(args.inpaint, args.out, count=args.count, seed=args.seed, steps=args.steps,
                      batch_size=args.batch_size, scheduler=args.scheduler, guidance_scale=args.guidance,
                      prior=args.prior, vae=args.vae, clip=args.clip, dino=args.dino))
    return 0


def _init_encoders(args) -> int:
    from .train.training import write_stand_in_encoders

    for p in write_stand_in_encoders(args.clip, args.dino):
        print(p)
    return 0


def _evaluate(args) -> int:
    from .loading.checkpoints import load_checkpoint
    from .train.evaluation import evaluate, format_table
    from .pipeline import PCDMsPipeline

    files = {n: getattr(args, n) or str(bundled.demo_file(n)) for n in ("prior", "inpaint", "refine", "clip", "dino", "vae")}
    pipe = PCDMsPipeline.from_files(**files, prepare=_cpu_speed_up)  # evaluation runs on the CPU
    settings = {k: dict(v) for k, v in bundled.SAMPLING.items()}
    for stage, v in settings.items():
        v["steps"] = args.steps or v["steps"]
        v["scheduler"] = getattr(args, f"{stage}_scheduler") or v["scheduler"]
        g = getattr(args, f"{stage}_guidance")
        v["guidance_scale"] = v["guidance_scale"] if g is None else g
    if args.refine_strength is not None:
        settings["refine"]["strength"] = args.refine_strength
    noprior = load_checkpoint(args.inpaint_noprior or bundled.demo_file("inpaint_noprior"), expect="inpaint")
    result = evaluate(pipe, args.out, count=args.pairs, batch_size=args.batch_size, settings=settings, size=bundled.SIZE,
                      noprior=noprior)
    print(format_table(result))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"generate": _generate, "convert": _convert, "inspect": _inspect, "train": _train,
                "make-coarse": _make_coarse, "init-encoders": _init_encoders, "evaluate": _evaluate}
    with reported_warnings(lambda text: print(f"warning: {text}", file=sys.stderr, flush=True)):
        try:
            return commands[args.command](args)
        except PCDMsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
