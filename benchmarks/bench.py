"""Speed and memory of every stage, at the official sizes (random weights, nothing downloaded) or tiny sizes.

    python benchmarks/bench.py --size official --dtype fp32 --json benchmarks/results/cpu_fp32.json
    python benchmarks/bench.py --size tiny
    python benchmarks/bench.py --size official --device cuda --dtype fp16

It prints a header (machine, date, command) and a table, and writes JSON. Measured, per stage:

* checkpoint load, fresh in a new process, the file read through first (``--cold``: after emptying the page
  cache instead, as root): from the official DeepSpeed ``.pt`` (fp16) through our reader, from our
  ``.safetensors`` (fp16), and from the ``.pt`` the official way (random-init network, ``torch.load``,
  ``load_state_dict``), into ``--dtype`` modules; with the peak memory of that process;
* encoder time (CLIP ViT-H/14, DINOv2-giant on one 224 crop), VAE encode / decode at 512 x 1024 and 512 x 512:
  diffusers' modules as loaded (what the nodes run) and, on a CPU, with ``pcdms_core.cpu.speed_up`` (what the
  command line runs);
* one sampling step of each stage (the network at the CFG batch, plus the scheduler step), as loaded and with
  the CPU speed-ups, next to a *floor*: a bare diffusers ``UNet2DConditionModel`` (or a bare stack of the
  prior's transformer blocks) at the same shapes and dtype, so the overhead of our wrappers is visible;
* end to end, the paper path (prior 20 steps, inpainting 20 steps with guidance 2, refining 20 steps with
  guidance 2), loading each stage when it is needed (``lazy=True``) and preparing the models as the command
  line does, with the peak memory of the whole run and of each stage alone.

Random weights are generated once into ``benchmarks/cache`` (about 9 GB for the official size).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import gc
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


CACHE = ROOT / "benchmarks" / "cache"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Where the example inputs are (the bundled ones).
EXAMPLES = ROOT / "pcdms_core" / "demo_models" / "examples"


def machine() -> str:
    """CPU model, cores and memory (Linux), or the GPU's name."""

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        cpu += f", {os.cpu_count()} cores, {mem / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    if torch.cuda.is_available():
        cpu += "; GPU " + torch.cuda.get_device_name(0)
    return f"{cpu}; torch {torch.__version__}"


def peak_rss_gib() -> float:
    """This process's own peak resident memory, in GiB: ``VmHWM`` on Linux, because ``ru_maxrss`` starts from
    the parent's peak when the process was forked (a subprocess of a parent that had 15 GiB resident read 15 GiB
    whatever it did itself)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def faults_of(fn) -> int:
    """Minor page faults the process takes while ``fn`` runs (pages the kernel had to map and zero)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def timed(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


# --- random models in the official layouts -----------------------------------------------------------------------

def _random_fill(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights of a sensible scale (N(0, 1/fan_in) matrices, unit norms, small biases)."""
    from pcdms_core.train.demo_models import seeded_init

    return seeded_init(module, seed)


def _cache(size: str) -> tuple[dict[str, Path], bool]:
    """The benchmark's model files for ``size``, and whether they are all there."""
    folder = CACHE / size
    files = {k: folder / n for k, n in [("prior", "s1.pt"), ("inpaint", "s2_paper.pt"), ("refine", "s3.pt"),
                                         ("clip", "clip.safetensors"), ("dino", "dino.safetensors"), ("vae", "vae.safetensors")]}
    complete = all(f.with_suffix(".safetensors").exists() for f in files.values()) and (
        size == "tiny" or all(f.exists() for f in files.values()))
    return files, complete


def make_models(size: str) -> dict[str, Path]:
    """The benchmark's model files (generated once): official layouts, fp16 like the released files."""
    from pcdms_core.train import demo_models as demo
    from pcdms_core.loading.checkpoints import SD21_BASE_UNET, convert_checkpoint, save_checkpoint
    from pcdms_core.networks.encoders import ImageEncoder
    from pcdms_core.loading.encoders import save_image_encoder
    from pcdms_core.networks.inpaint import InpaintModel
    from pcdms_core.networks.layers import ImageProjector, PoseEncoder
    from pcdms_core.networks.prior import PriorTransformer
    from pcdms_core.networks.refine import RefineModel
    from pcdms_core.loading.vae import SD21_BASE_VAE, save_vae
    from pcdms_core.networks.vit import ClipVision, Dinov2
    from pcdms_core import diffusers_glue as glue
    files, complete = _cache(size)
    if complete:
        return files
    (CACHE / size).mkdir(parents=True, exist_ok=True)

    def deepspeed(model, path):
        if size == "tiny":  # non-official sizes need their config: our .safetensors carries it, a .pt does not
            save_checkpoint(model, path.with_suffix(".safetensors"), dtype=torch.float16)
            return
        sd = {k: v.half() for k, v in model.state_dict().items()}
        torch.save({"module": sd, "buffer_names": [], "optimizer": None, "ds_version": "0.10.0"}, path)
        convert_checkpoint(path)

    def unet(in_channels, projection):
        cfg = dict(SD21_BASE_UNET, in_channels=in_channels)
        if projection:
            cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=1024)
        if size == "tiny":
            cfg = dict(demo.unet_config("inpaint" if in_channels == 9 else "refine", "paper" if projection else "noprior"),
                       in_channels=in_channels)
        return glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, cfg))

    if size == "official":
        prior = PriorTransformer()
        inpaint = InpaintModel(unet(9, True), PoseEncoder(), ImageProjector(), "paper")
        refine = RefineModel(unet(8, False), ImageProjector())
        clip, dino = ImageEncoder(ClipVision(), "clip"), ImageEncoder(Dinov2(), "dinov2")
        vae = glue.AutoencoderKL(**glue.accepted_kwargs(glue.AutoencoderKL, SD21_BASE_VAE))
    else:
        prior, inpaint, refine = demo.build_prior(), demo.build_inpaint("paper"), demo.build_refine()
        clip, dino, vae = demo.build_clip(), demo.build_dino(), demo.build_vae()
    for i, (name, model) in enumerate([("prior", prior), ("inpaint", inpaint), ("refine", refine)]):
        deepspeed(_random_fill(model, i), files[name])
        del model
        gc.collect()
    save_image_encoder(_random_fill(clip, 10), files["clip"], torch.float16)
    save_image_encoder(_random_fill(dino, 11), files["dino"], torch.float16)
    save_vae(vae, files["vae"], torch.float16)
    return files


def _model_files(size: str) -> dict[str, Path]:
    """The model files, generated first in a child process when missing: building the official-size models takes
    about 20 GB, and a process's peak RSS is inherited across fork and exec, so every measurement made from a
    parent that had built them would report that peak (and the page cache they evicted would slow the loads)."""
    files, complete = _cache(size)
    if not complete:
        _subprocess(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench; "
                    f"bench.make_models({size!r}); print('{{}}')")
    return files


# --- measurements ------------------------------------------------------------------------------------------------

def _subprocess(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (cold imports, its own peak RSS); it prints one JSON line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = inspect.getsource(peak_rss_gib) + code  # each snippet reports its peak with it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=7200)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def drop_page_cache() -> bool:
    """Empty the kernel's page cache so the next read comes from the disk (needs root; False when refused)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_load(files: dict, dtype: str, threads: int, cold: bool = False) -> dict:
    """``cold``: drop the page cache before each load (when allowed); otherwise each file is read through once
    just before its load, so that every row loads from memory whatever the rows before it evicted (14 GB of
    official-size files do not all stay cached on a 24 GB machine)."""
    rows = {}

    def run(code: str, path: Path) -> dict:
        if cold and drop_page_cache():
            row = dict(page_cache="dropped")
        else:
            with open(path, "rb") as f:
                while f.read(64 << 20):
                    pass
            row = dict(page_cache="warm")
        row.update(_subprocess(code))
        return row
    for stage in ("prior", "inpaint", "refine"):
        for fmt in (".pt", ".safetensors"):
            path = files[stage].with_suffix(fmt)
            if not path.exists():
                continue
            code = f"""
import json, time, torch, resource
torch.set_num_threads({threads})
from pcdms_core.loading.checkpoints import load_checkpoint
t = time.perf_counter()
m = load_checkpoint({str(path)!r}, dtype=torch.{DTYPES[dtype]})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_gib": peak_rss_gib()}}))
"""
            rows[f"load {stage} {fmt}"] = run(code, path)
        pt = files[stage].with_suffix(".pt")
        if pt.exists():
            # The official way: build the network with its random
            # initialisation (the official scripts even read the SD 2.1 / Kandinsky weights first, skipped here, so
            # this row is a lower bound), torch.load the whole file, then copy it in with load_state_dict.
            code = f"""
import json, time, torch, resource
torch.set_num_threads({threads})
from pcdms_core import diffusers_glue as glue
from pcdms_core.loading.checkpoints import SD21_BASE_UNET
from pcdms_core.networks.inpaint import InpaintModel
from pcdms_core.networks.layers import ImageProjector, PoseEncoder
from pcdms_core.networks.prior import PriorTransformer
from pcdms_core.networks.refine import RefineModel
def unet(in_channels, projection):
    cfg = dict(SD21_BASE_UNET, in_channels=in_channels)
    if projection:
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=1024)
    return glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, cfg))
t = time.perf_counter()
stage = {stage!r}
if stage == "prior":
    m = PriorTransformer()
elif stage == "inpaint":
    m = InpaintModel(unet(9, True), PoseEncoder(), ImageProjector(), "paper")
else:
    m = RefineModel(unet(8, False), ImageProjector())
sd = torch.load({str(pt)!r}, map_location="cpu", weights_only=True)["module"]
m.load_state_dict(sd)
m.to(torch.{DTYPES[dtype]})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_gib": peak_rss_gib()}}))
"""
            rows[f"load {stage} .pt, the official way"] = run(code, pt)
    return rows


def _step_seconds(run) -> float:
    """The median time between consecutive steps of a real sampling run (network, guidance, scheduler)."""
    stamps: list[float] = []

    def cb(info):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    run(cb)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return gaps[len(gaps) // 2]


def bench_components(files: dict, dtype: str, device: str, size: str, steps: int = 3) -> dict:
    from pcdms_core import diffusers_glue as glue
    from pcdms_core.networks import vae as vae_ops
    from pcdms_core.loading.checkpoints import load_checkpoint
    from pcdms_core.loading.encoders import load_image_encoder
    from pcdms_core.stages.inpaint import sample_inpaint
    from pcdms_core.cpu import speed_up
    from pcdms_core.loading.vae import load_vae
    from pcdms_core.stages.prior import sample_prior
    from pcdms_core.stages.refine import sample_refine

    dt = DTYPES[dtype]
    cpu = torch.device(device).type == "cpu"
    s = 512 if size == "official" else 64
    rows: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (1, 3, s, s), dtype=torch.uint8, generator=gen)
    pose = torch.randint(0, 256, (1, 3, s, s), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        for kind in ("clip", "dino"):
            enc = load_image_encoder(files[kind], dtype=dt, device=device)
            x = torch.randn(1, 3, 224, 224, generator=gen).to(device=device, dtype=dt)
            rows[f"encoder {kind} (one 224 crop)"] = {"seconds": timed(lambda: enc(x))}
            if kind == "dino":
                tokens = enc(x)
            else:
                embedding = enc(x)
            del enc
            gc.collect()
        vae = load_vae(files["vae"], dtype=dt, device=device)
        f = vae_ops.downscale_factor(vae)
        for w in (2 * s, s):
            img = (torch.rand(1, 3, s, w, generator=gen) * 2 - 1).to(device=device, dtype=dt)
            rows[f"VAE encode {s}x{w}"] = {"seconds": timed(lambda: vae_ops.encode(vae, img, None), repeat=2)}
            z = torch.randn(1, 4, s // f, w // f, generator=gen).to(device=device, dtype=dt)
            rows[f"VAE decode {s}x{w}"] = {"seconds": timed(lambda: vae_ops.decode(vae, z), repeat=2)}
            if cpu:
                fast = speed_up(copy.deepcopy(vae))
                rows[f"VAE encode {s}x{w}, CPU speed-ups"] = {
                    "seconds": timed(lambda: vae_ops.encode(fast, img, None), repeat=2)}
                rows[f"VAE decode {s}x{w}, CPU speed-ups"] = {
                    "seconds": timed(lambda: vae_ops.decode(fast, z), repeat=2)}
                del fast

        # Each stage: the time per step inside a real sampling run, next to a bare diffusers network of the same
        # config, dtype and shapes (random weights) called the same way at the CFG batch.
        def time_bare(stage: str, shape: list, forward) -> None:
            """``timed``'s best of two, with the page faults of the last timed call (no extra forward)."""
            faults = []
            seconds = timed(lambda: faults.append(faults_of(forward)), repeat=2)
            rows[f"{stage} bare diffusers UNet forward {shape}"] = {"seconds": seconds, "page_faults": faults[-1]}

        def time_steps(stage: str, model, run) -> None:
            """The median step of a real sampling run, with the model as loaded and (CPU) with the speed-ups."""
            rows[f"{stage} step (ours, CFG 2)"] = {"seconds": _step_seconds(lambda cb: run(model, cb))}
            if cpu:
                fast = speed_up(copy.deepcopy(model))
                rows[f"{stage} step (ours, CFG 2, CPU speed-ups)"] = {"seconds": _step_seconds(lambda cb: run(fast, cb))}

        def bare_unet(model):
            cfg = dict(model.unet.config)
            net = glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, cfg))
            return net.to(device=device, dtype=dt).eval()

        lat = s // f
        t = torch.tensor([500, 500], device=device)
        model = load_checkpoint(files["inpaint"].with_suffix(".safetensors"), dtype=dt, device=device)
        time_steps("stage 2", model, lambda m, cb: sample_inpaint(
            m, vae, src, pose, pose, tokens, embedding, size=(s, s), steps=steps, guidance_scale=2.0,
            generator=0, callback=cb, decode=False))
        bare = bare_unet(model)
        ctx = torch.randn(2, tokens.shape[1] + 1, bare.config.cross_attention_dim, generator=gen).to(device=device, dtype=dt)
        x = torch.randn(2, 9, lat, 2 * lat, generator=gen).to(device=device, dtype=dt)
        labels = ctx[:, -1] if bare.config.class_embed_type == "projection" else None
        time_bare("stage 2", list(x.shape), lambda: bare(x, t, encoder_hidden_states=ctx, class_labels=labels).sample)
        del model, bare
        gc.collect()

        model = load_checkpoint(files["refine"].with_suffix(".safetensors"), dtype=dt, device=device)
        time_steps("stage 3", model, lambda m, cb: sample_refine(
            m, vae, src, tokens, size=(s, s), steps=steps, guidance_scale=2.0, generator=0, callback=cb,
            decode=False))
        bare = bare_unet(model)
        x3 = torch.randn(2, 8, lat, lat, generator=gen).to(device=device, dtype=dt)
        ctx3 = ctx[:, : tokens.shape[1]]
        time_bare("stage 3", list(x3.shape), lambda: bare(x3, t, encoder_hidden_states=ctx3).sample)
        del model, bare, vae
        gc.collect()

        prior = load_checkpoint(files["prior"].with_suffix(".safetensors"), dtype=dt, device=device)
        poses = torch.rand(1, 36, generator=gen)
        rows["prior step (ours)"] = {"seconds": _step_seconds(lambda cb: sample_prior(
            prior, embedding.float(), poses, poses, steps=max(steps, 6), generator=0, callback=cb))}
        blocks = torch.nn.Sequential(*prior.transformer_blocks, prior.norm_out)
        h = torch.randn(1, 6, prior.config.inner_dim, generator=gen).to(device=device, dtype=dt)
        rows["prior bare transformer blocks forward [1,6]"] = {"seconds": timed(lambda: blocks(h))}
        del prior, blocks
    return rows


def bench_end_to_end(files: dict, dtype: str, device: str, size: str, threads: int, stage_alone: bool = True,
                     steps: int = 20) -> dict:
    s = 512 if size == "official" else 64
    base = f"""
import json, time, torch, resource
torch.set_num_threads({threads})
from pcdms_core.pipeline import PCDMsPipeline, StageSettings
from pcdms_core.pose.keypoints import load_pose
from PIL import Image
files = {{k: v for k, v in {json.dumps({k: str(v.with_suffix('.safetensors') if k in ('prior', 'inpaint', 'refine') else v) for k, v in files.items()})}.items()}}
from pcdms_core.cpu import speed_up
prepare = speed_up if torch.device({device!r}).type == "cpu" else None  # as the command line does
pipe = PCDMsPipeline.from_files(**files, dtype=torch.{DTYPES[dtype]}, device={device!r}, lazy=True, prepare=prepare)
src = Image.open({str(EXAMPLES / 'pcdms_example_source.png')!r})
sp = load_pose({str(EXAMPLES / 'pcdms_example_source_pose.json')!r})
tp = load_pose({str(EXAMPLES / 'pcdms_example_target_pose.json')!r})
guided = StageSettings(steps={steps}, guidance_scale=2.0)  # stages 2 and 3 guided (the prior: its defaults)
"""
    full = base + f"""
t = time.perf_counter()
stamps = {{}}
def cb(stage, info):  # when each sampling step ends, per stage
    stamps.setdefault(stage, []).append(time.perf_counter())
res = pipe(src, sp, tp, size=({s}, {s}), prior_size=({s}, {s}), seed=42, callback=cb,
           inpaint_settings=guided, refine_settings=guided)
total = time.perf_counter() - t
steps = {{k: sorted(b - a for a, b in zip(v, v[1:]))[(len(v) - 1) // 2] for k, v in stamps.items() if len(v) > 1}}
print(json.dumps({{"seconds": total, "peak_gib": peak_rss_gib(),
                  "median_step_seconds": steps}}))
"""
    rows = {"paper path end to end (lazy loading)": _subprocess(full)}
    if stage_alone:
        # each stage's working set alone, run by the pipeline's own stage method (so its models load and free, and
        # its VAE work is ordered, exactly as in the run above) with the same steps and guidance
        for stage in ("dino+clip", "prior", "inpaint", "refine"):
            code = base + f"""
from pcdms_core import images as im
from pcdms_core.loading.checkpoints import inspect_checkpoint
from pcdms_core.networks.layers import projector_config_from_shapes
from pcdms_core.pose.keypoints import render_pose
from pcdms_core.loading.weights import open_weights
size = ({s}, {s})
emb = inspect_checkpoint(files["prior"]).config["prior"]["embedding_dim"]  # random stand-ins of the right widths
width = projector_config_from_shapes(open_weights(files["inpaint"]).shapes, "image_proj_model_p.").in_dim
srcu = im.as_uint8_batch(src)
stage = {stage!r}
t = time.perf_counter()
with torch.no_grad():
    if stage == "dino+clip":
        pipe.run_encoders(srcu, size)
    elif stage == "prior":
        pipe.run_prior(torch.randn(1, emb), sp, tp, StageSettings(), seed=0)
    elif stage == "inpaint":
        pipe.run_inpaint(srcu, render_pose(sp, size), render_pose(tp, size), torch.randn(1, 257, width),
                         torch.randn(1, emb), size, guided, seed=0)
    else:
        pipe.run_refine(srcu, torch.randn(1, 257, width), size, guided, seed=0)
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_gib": peak_rss_gib()}}))
"""
            rows[f"stage alone: {stage}"] = _subprocess(code)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["official", "tiny"], default="tiny")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", choices=["load", "components", "e2e"], default=["load", "components", "e2e"])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--steps", type=int, default=20, help="end to end: the steps of each stage (default 20)")
    ap.add_argument("--no-stage-alone", action="store_true", help="end to end: skip the stage-alone rows")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each checkpoint load (needs root; the table says when it could)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = _model_files(args.size)
    results: dict[str, dict] = {}
    if "load" in args.only:
        results.update(bench_load(files, args.dtype, args.threads, args.cold))
    if "components" in args.only:
        results.update(bench_components(files, args.dtype, args.device, args.size))
    if "e2e" in args.only:
        results.update(bench_end_to_end(files, args.dtype, args.device, args.size, args.threads,
                                        stage_alone=not args.no_stage_alone, steps=args.steps))
    header = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print()
    for k, v in header.items():
        print(f"{k}: {v}")
    print(f"{args.size} size, {args.dtype}, {args.device}, {args.threads} threads")
    print(f"{'measurement':58s} {'seconds':>10s} {'peak GiB':>9s}")
    for name, row in results.items():
        peak = f"{row['peak_gib']:.2f}" if "peak_gib" in row else ""
        note = "  (page cache dropped)" if row.get("page_cache") == "dropped" else ""
        faults = f"  ({row['page_faults']:,} page faults)" if "page_faults" in row else ""
        print(f"{name:58s} {row['seconds']:10.3f} {peak:>9s}{note}{faults}")
        for stage, step in row.get("median_step_seconds", {}).items():
            print(f"{'  of which one ' + stage + ' step (median)':58s} {step:10.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
