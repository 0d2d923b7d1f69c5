"""GPU check: every stage at the official size with random weights, in fp16 and bf16, in one command of a few
minutes (nothing is downloaded; the official-topology models are built from their configs in code).

    python benchmarks/gpu_check.py --check-deps                     # what is there, what is missing
    python benchmarks/gpu_check.py --json gpu_check.json            # official size, cuda, fp16 and bf16
    python benchmarks/gpu_check.py --wheels .whl --json out.json    # first install the wheels carried in .whl
    python benchmarks/gpu_check.py --device cpu --size tiny --dtypes fp32,bf16   # seconds, on any CPU

For each stage (VAE encode and decode of the 512 x 1024 canvas, CLIP ViT-H/14 and DINOv2-giant on one 224 crop,
the prior, the stage-2 paper UNet, the stage-3 UNet) and each dtype it

* checks that the output is finite, and how far it is from the same stage run in fp32 (same weights, same
  seed, TF32 off): the relative L2 error;
* times one denoising step as the samplers call it (the call is captured from a one-step run of
  ``sample_prior`` / ``sample_inpaint`` / ``sample_refine``, guidance 2 for the UNets, so batch 2) against the
  bare network on the same inputs: a plain diffusers ``UNet2DConditionModel`` holding the same weights (the
  prior: its bare transformer blocks; the VAE: diffusers' own ``encode`` / ``decode``), median of
  ``--repeat`` interleaved calls after ``--warmup`` calls, with ``torch.cuda.synchronize``;
* records the peak GPU memory of that step (``torch.cuda.max_memory_allocated``, reset per stage; weights
  included).

Then, per dtype, the paper path stage by stage (DINOv2, CLIP, prior, stage 2 with the VAE encode before and the
decode after it, stage 3 likewise) with ``--steps`` steps a stage, each model moved to the GPU just before its
stage and back to the CPU after it, as ComfyUI's model management does: its peak GPU memory, its time and the
median sampler step of each stage. Last, ``native_check``: ComfyUI's own KSampler on stage 2, when ComfyUI's
source is given with ``--comfyui PATH``.

It prints one table with the machine, the date and the command, and writes JSON (``--json``; rewritten after
every row, so a run cut short keeps what it measured). ``--time-budget`` seconds (default 420) bound the run:
an item that would start with less time left than the longest item so far took is skipped, with a note. Exit
status: 0 when every output measured is finite, 1 when one is not or an item failed with an error (its row says
which), 2 when something it needs is missing.

What it needs: PyTorch; diffusers, safetensors, numpy and Pillow (``--check-deps`` lists them with their
versions); and this checkout, whose ``pcdms_core`` is imported from the folder above this script (nothing of
the repository is installed). A machine without network can be given wheels: ``--wheels DIR`` installs every
wheel in ``DIR`` with ``pip install --no-index --find-links DIR --no-deps --target <temporary folder>`` and
puts that folder first on ``sys.path``. ``--check-deps`` prints the ``pip download`` command that makes them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "pcdms_core" / "demo_models" / "examples"

# (module, pip name, lowest version, what for): the project's own requirements (requirements.txt) and torch.
REQUIREMENTS = [
    ("torch", "torch", "2.1", "everything (the build that fits the GPU, as the machine has it)"),
    ("diffusers", "diffusers", "0.30", "the UNets, the VAE, the schedulers"),
    ("safetensors", "safetensors", "0.4", "pcdms_core's file loading (imported with it)"),
    ("numpy", "numpy", "1.24", "pose drawing, schedulers"),
    ("PIL", "pillow", "9.5", "the images' resizing"),
]
WRITTEN_AGAINST = {"diffusers": "0.42.1", "safetensors": "0.8.0"}  # the versions this script was run with

STAGES = ["vae_encode", "vae_decode", "clip", "dino", "prior", "inpaint", "refine", "path", "native"]
LABELS = {
    "vae_encode": "VAE encode", "vae_decode": "VAE decode", "clip": "CLIP image encoder",
    "dino": "DINOv2 image encoder", "prior": "stage 1 prior", "inpaint": "stage 2 UNet (paper)",
    "refine": "stage 3 UNet", "path": "paper path, stage by stage", "native": "native KSampler, stage 2",
}
NATIVE_SKIPPED = "skipped: needs ComfyUI source beside it (--comfyui PATH)"


# --- what the run needs --------------------------------------------------------------------------------------------

def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_deps() -> list[dict]:
    """One entry per requirement: importable, its version, and whether it is new enough. diffusers is imported
    with the classes used, so a missing package of its own shows up here too (by name)."""
    found = []
    for module, pip_name, lowest, why in REQUIREMENTS:
        entry = {"package": pip_name, "needed_for": why, "lowest": lowest, "ok": False, "version": None}
        try:
            mod = importlib.import_module(module)
            if module == "diffusers":
                for cls in ("UNet2DConditionModel", "AutoencoderKL"):  # diffusers imports these lazily
                    getattr(mod, cls)
            entry["version"] = str(getattr(mod, "__version__", "?"))
            entry["where"] = str(Path(mod.__file__).parent) if getattr(mod, "__file__", None) else None
            entry["ok"] = _version_tuple(entry["version"]) >= _version_tuple(lowest)
            if not entry["ok"]:
                entry["problem"] = f"version {entry['version']} is older than {lowest}"
        except ImportError as exc:
            entry["problem"] = f"cannot import: {exc}"
        found.append(entry)
    if all(e["ok"] for e in found):
        entry = {"package": "pcdms_core (this checkout)", "needed_for": "the stages", "ok": False,
                 "version": None, "lowest": None}
        try:
            sys.path.insert(0, str(ROOT))
            import pcdms_core

            entry.update(ok=True, version=f"{pcdms_core.__version__} from {Path(pcdms_core.__file__).parent}")
        except Exception as exc:  # noqa: BLE001 - any failure here is reported, not raised
            entry["problem"] = f"cannot import from {ROOT}: {type(exc).__name__}: {exc}"
        found.append(entry)
    return found


def how_to_bring(missing: list[str]) -> str:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    names = " ".join(f"{n}=={WRITTEN_AGAINST[n]}" if n in WRITTEN_AGAINST else n for n in missing if n != "torch")
    lines = []
    if "torch" in missing:
        lines.append("PyTorch is missing: use the Python that has it.")
    if names:
        lines += [
            f"Bring the missing packages as wheels made on a machine with network, for this Python ({py}):",
            f"    python3 -m pip download --no-deps --only-binary=:all: --python-version {py} --implementation cp "
            f"--platform manylinux2014_x86_64 -d .whl {names}",
            "(a package's own requirements are not fetched by --no-deps: name those that are missing too), carry",
            "the folder with this checkout, and add --wheels .whl: the wheels are installed with",
            "    pip install --no-index --find-links .whl --no-deps --target <temporary folder>",
            "and that folder is put first on sys.path. pcdms_core itself is imported from this checkout.",
        ]
    return "\n".join(lines)


def install_wheels(folder: str) -> str:
    """Install every wheel in ``folder`` into a fresh folder put first on ``sys.path``; returns that folder."""
    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no .whl files there")
    target = tempfile.mkdtemp(prefix="gpu_check_site_")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", folder, "--no-deps",
           "--no-compile", "--target", target, *wheels]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"installing the wheels failed:\n{' '.join(cmd)}\n{done.stderr[-2000:]}")
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    return target


def print_deps(deps: list[dict]) -> None:
    for e in deps:
        where = f" at {e['where']}" if e.get("where") else ""
        state = f"ok   {e['version']}{where}" if e["ok"] else f"MISSING ({e.get('problem', '')})"
        print(f"  {e['package']:28s} {state}   [{e['needed_for']}]")


# --- the machine ---------------------------------------------------------------------------------------------------

def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_mib=props.total_memory // 2**20,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=None)
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True)
            if out.returncode == 0 and out.stdout.strip():
                info["driver"] = out.stdout.strip().splitlines()[0]
    return info


def machine_line(m: dict) -> str:
    parts = []
    if "gpu" in m:
        parts.append(f"GPU {m['gpu']} ({m['gpu_memory_mib']} MiB), driver {m.get('driver') or 'unknown'}, "
                     f"CUDA {m['cuda']}, cuDNN {m['cudnn']}")
    parts.append(f"CPU {m['cpu']} ({m['cpu_count']} cores)")
    parts.append(f"torch {m['torch']}, diffusers {m.get('diffusers', '?')}, Python {m['python']}")
    return "; ".join(parts)


# --- small tools ---------------------------------------------------------------------------------------------------

class Budget:
    """The time left of ``--time-budget``; an item starts only when more is left than the longest item took."""

    def __init__(self, seconds: float, start: float):
        self.seconds, self.start, self.longest = seconds, start, 0.0

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self) -> bool:
        return self.left() > max(self.longest * 1.2, 1.0)

    def took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


class Run:
    """The measuring context: device, dtypes, sizes, inputs; and the rows measured so far."""

    def __init__(self, args, header: dict):
        import torch

        self.torch = torch
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.header = header
        self.rows: list[dict] = []
        self.budget = Budget(args.time_budget, args.started)

    # memory and time
    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self, collect: bool = False) -> None:
        """Hand the device memory of dropped tensors back; ``collect``: collect reference cycles first."""
        if collect:
            gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self):
        if not self.cuda:
            return None
        self.sync()
        return self.torch.cuda.max_memory_allocated() / 2**20

    def allocated_mib(self):
        return self.torch.cuda.memory_allocated() / 2**20 if self.cuda else None

    def time_pair(self, ours, bare=None) -> tuple[float, float | None]:
        """Median milliseconds of ``ours`` and ``bare``, called alternately after the warm-up calls."""
        for _ in range(self.args.warmup):
            ours()
            if bare is not None:
                bare()
        self.sync()
        t_ours, t_bare = [], []
        for _ in range(self.args.repeat):
            for fn, times in ((ours, t_ours), (bare, t_bare)):
                if fn is None:
                    continue
                t = time.perf_counter()
                fn()
                self.sync()
                times.append((time.perf_counter() - t) * 1000)
        return statistics.median(t_ours), (statistics.median(t_bare) if t_bare else None)

    def add(self, row: dict) -> None:
        row.setdefault("label", LABELS.get(row["stage"], row["stage"]))
        self.rows.append(row)
        print("  " + format_row(row), flush=True)
        self.write_json()

    def write_json(self) -> None:
        if self.args.json:
            path = Path(self.args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**self.header, "rows": self.rows,
                                        "ok": all(r.get("finite") is not False and not r.get("error")
                                                  for r in self.rows)}, indent=1))


def failure(stage: str, dtype_name: str, exc: Exception) -> dict:
    """The row of an item that raised: ``finite`` False when the stage refused non-finite values (pcdms_core's
    ``NumericalError``, or an input it found NaN in), else ``None`` with the error; either fails the run."""
    from pcdms_core.errors import NumericalError

    text = f"{type(exc).__name__}: {exc}"
    numerical = isinstance(exc, NumericalError) or "NaN" in str(exc)
    return {"stage": stage, "dtype": dtype_name, "finite": False if numerical else None, "error": text,
            "note": ("not finite: " if numerical else "error: ") + text.split(". ")[0][:160]}


def weights_mib(*modules) -> float:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def all_finite(*tensors) -> bool:
    return all(bool(t.isfinite().all()) for t in tensors if t is not None)


def rel_err(out, ref) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


class Capture:
    """The first call of a module (its args and kwargs), recorded while a sampler runs."""

    def __init__(self, module, pre: bool = False):
        self.args = self.kwargs = None
        if pre:
            self.handle = module.register_forward_pre_hook(self._pre)
        else:
            self.handle = module.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args):
        if self.args is None:
            self.args, self.kwargs = args, {}

    def _post(self, module, args, kwargs, output):
        if self.args is None:
            self.args, self.kwargs = args, kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --- the models, official topology or tiny, random weights ---------------------------------------------------------

class Models:
    """Builds each network on the run's device in fp32 with seeded random weights (N(0, 1/fan_in) matrices, unit
    norms, small biases: the scale of ``pcdms_core.train.demo_models.seeded_init``), drawn on that device, so a
    rebuild gives the same weights.

    ``official``: the released topologies (SD 2.1-base UNets and VAE, the prior of width 2048 with 20 blocks,
    CLIP ViT-H/14, DINOv2-giant), 512 x 512 per half. ``tiny``: the parity set's configs (``tests/fixtures/
    parity``: the official interfaces, 1024-wide embeddings, a VAE and pose encoder that downscale by 8, with
    narrow layers), 64 x 64 per half: seconds on a CPU."""

    SEEDS = {"vae": 1, "clip": 2, "dino": 3, "prior": 4, "inpaint": 5, "refine": 6}
    PARITY = ROOT / "tests" / "fixtures" / "parity"

    def __init__(self, size: str, device, poison: str | None = None):
        import torch

        from pcdms_core.loading.checkpoints import SD21_BASE_UNET
        from pcdms_core.loading.vae import SD21_BASE_VAE
        from pcdms_core.networks.layers import PoseEncoderConfig, ProjectorConfig
        from pcdms_core.networks.prior import PriorConfig
        from pcdms_core.networks.vit import ClipVisionConfig, Dinov2Config

        self.torch, self.size, self.device, self.poison = torch, size, device, poison
        if size == "official":
            self.half = 512  # one half of the canvas, pixels
            self.unet = {"inpaint": dict(SD21_BASE_UNET, in_channels=9, class_embed_type="projection",
                                         projection_class_embeddings_input_dim=1024),
                         "refine": dict(SD21_BASE_UNET, in_channels=8)}
            self.vae_config, self.prior_config = SD21_BASE_VAE, PriorConfig()
            self.clip_config, self.dino_config = ClipVisionConfig(), Dinov2Config()
            self.projector, self.pose = ProjectorConfig(), PoseEncoderConfig(out_channels=320)
        else:
            def config(*parts):
                return json.loads(self.PARITY.joinpath(*parts).read_text())

            aux = config("configs", "aux_modules.json")
            self.half = 64
            self.unet = {"inpaint": config("configs", "s2_paper_unet", "config.json"),
                         "refine": config("configs", "s3_unet", "config.json")}
            self.vae_config = config("vae", "config.json")
            self.prior_config = PriorConfig.from_dict(config("configs", "s1_prior", "config.json"))
            self.clip_config = ClipVisionConfig.from_dict(config("clip_vision", "config.json"))
            self.dino_config = Dinov2Config.from_dict(config("dinov2", "config.json"))
            proj, pose = aux["s2_paper.image_proj_model_p"], aux["s2_paper.pose_proj"]
            self.projector = ProjectorConfig(in_dim=proj["in_dim"], hidden_dim=proj["hidden_dim"],
                                             out_dim=proj["out_dim"])
            self.pose = PoseEncoderConfig(out_channels=pose["conditioning_embedding_channels"],
                                          widths=tuple(pose["block_out_channels"]))
        self.vae_factor = 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        self.token_dim, self.embed_dim = self.projector.in_dim, self.prior_config.embedding_dim

    def build(self, name: str):
        torch = self.torch
        with torch.device(self.device):
            model = getattr(self, "_" + name)()
        gen = torch.Generator(self.device).manual_seed(self.SEEDS[name])
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen, device=p.device) / p[0].numel() ** 0.5)
                elif ("norm" in pname and pname.endswith("weight")) or pname.endswith("lambda1"):
                    p.fill_(1.0)
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=p.device))
            if self.poison == name:  # --poison: one weight made NaN, to see the check fail
                next(p for p in model.parameters() if p.ndim >= 2).view(-1)[0] = float("nan")
        return model.eval().requires_grad_(False)

    def _vae(self):
        from pcdms_core import diffusers_glue as glue

        return glue.build_vae(self.vae_config)

    def _clip(self):
        from pcdms_core import ImageEncoder
        from pcdms_core.networks.vit import ClipVision

        return ImageEncoder(ClipVision(self.clip_config), "clip")

    def _dino(self):
        from pcdms_core import ImageEncoder
        from pcdms_core.networks.vit import Dinov2

        return ImageEncoder(Dinov2(self.dino_config), "dinov2")

    def _prior(self):
        from pcdms_core import PriorTransformer

        return PriorTransformer(self.prior_config)

    def _inpaint(self):
        from pcdms_core import InpaintModel
        from pcdms_core import diffusers_glue as glue
        from pcdms_core.networks.layers import ImageProjector, PoseEncoder

        return InpaintModel(glue.build_unet(self.unet["inpaint"]), PoseEncoder(self.pose),
                            ImageProjector(self.projector), "paper")

    def _refine(self):
        from pcdms_core import RefineModel
        from pcdms_core import diffusers_glue as glue
        from pcdms_core.networks.layers import ImageProjector

        return RefineModel(glue.build_unet(self.unet["refine"]), ImageProjector(self.projector))


class NoVAE:
    """What the samplers need of a VAE when the latents are given (the stage checks run without a VAE): its
    downscale factor. Any use of it for pixels is an error."""

    scaling_factor = 0.18215

    def __init__(self, downscale: int, device, dtype):
        self.downscale, self.device, self.dtype = downscale, device, dtype

    def moments(self, pixels):
        raise RuntimeError("the stage check gives the sampler its latents; it should not encode")

    def decode(self, z):
        raise RuntimeError("the stage check asks the sampler for latents; it should not decode")


class Inputs:
    """The run's inputs: the bundled example source and poses (stretched to the working size), and random
    stand-ins of the encoders' outputs for the stage checks (seeded)."""

    def __init__(self, models: Models):
        import torch
        from PIL import Image

        from pcdms_core import as_uint8_batch, load_pose, pose_vector, render_pose

        s = models.half
        self.size = (s, s)
        with Image.open(EXAMPLES / "pcdms_example_source.png") as img:  # at the working size: no stretch
            self.source = as_uint8_batch(img.convert("RGB").resize(self.size, Image.BICUBIC))
        sp = load_pose(EXAMPLES / "pcdms_example_source_pose.json")
        tp = load_pose(EXAMPLES / "pcdms_example_target_pose.json")
        self.source_pose, self.target_pose = pose_vector(sp), pose_vector(tp)
        self.source_skeleton, self.target_skeleton = render_pose(sp, self.size), render_pose(tp, self.size)
        gen = torch.Generator().manual_seed(0)
        self.tokens = torch.randn(1, 257, models.token_dim, generator=gen)  # DINOv2 last_hidden_state
        self.embedding = 0.4 * torch.randn(1, models.embed_dim, generator=gen)  # CLIP image_embeds


# --- the stage checks ----------------------------------------------------------------------------------------------

def dtype_of(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_stage(run: Run, models: Models, inputs: Inputs, stage: str) -> None:
    """Every dtype of one stage: the fp32 reference first (the fp32 row itself when fp32 is asked for, else an
    untimed run), then per dtype the finite check, the error against the reference, the step against the bare
    network and the peak memory."""
    torch = run.torch
    ref = None
    wanted = run.args.dtype_list
    order = ["fp32"] + [d for d in wanted if d != "fp32"] if "fp32" in wanted else [None, *wanted]
    for dtype_name in order:
        reference = dtype_name in (None, "fp32")
        if not run.budget.allows():
            if dtype_name is not None:
                run.add({"stage": stage, "dtype": dtype_name, "finite": None,
                         "note": f"skipped: time budget ({run.budget.left():.0f} s left)"})
            continue
        t0 = time.perf_counter()
        if reference and run.cuda:  # the reference in true fp32
            tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad(), warnings.catch_warnings():
                if not run.cuda:  # pcdms_core warns about bf16 on CPUs without fast kernels: known here
                    warnings.filterwarnings("ignore", message="PCDMs: a model runs in")
                result = STAGE_CHECKS[stage](run, models, inputs, dtype_of(dtype_name or "fp32"),
                                             timed=dtype_name is not None)
        except Exception as exc:  # noqa: BLE001 - one stage failing is a result; the others still run
            run.add(failure(stage, dtype_name or "fp32 reference", exc))
            run.budget.took(time.perf_counter() - t0)
            continue
        finally:
            if reference and run.cuda:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            run.free(collect=True)  # the stage-2 model holds a reference cycle (its pose hook)
        out = result.pop("output")
        if reference:
            ref = out.detach().float().cpu()
            ref_finite = all_finite(ref)
        if dtype_name is None:
            run.budget.took(time.perf_counter() - t0)
            continue
        result["finite"] = bool(result.pop("finite_extra", True)) and all_finite(out)
        result["err_vs_fp32"] = rel_err(out, ref) if ref is not None else None
        result["fp32_reference_finite"] = ref_finite if ref is not None else None
        if result["ours_ms"] and result.get("bare_ms"):
            result["ratio"] = result["ours_ms"] / result["bare_ms"]
        if dtype_name == "fp32" and run.cuda:
            result["note"] = "TF32 off"
        result["seconds"] = time.perf_counter() - t0
        run.budget.took(result["seconds"])
        run.add({"stage": stage, "dtype": dtype_name, **result})


def _prepared(run: Run, models: Models, name: str, dtype):
    model = models.build(name).to(dtype)
    run.free()
    return model


def check_vae(run: Run, models: Models, inputs: Inputs, dtype, timed: bool, what: str) -> dict:
    import torch

    from pcdms_core import decode, encode, prepare_canvases, to_model_range

    vae = _prepared(run, models, "vae", dtype)
    s = models.half
    masked, _ = prepare_canvases(inputs.source, inputs.source_skeleton, inputs.target_skeleton, inputs.size)
    pixels = to_model_range(masked).to(run.device, dtype)  # the [source | black] canvas stage 2 encodes
    sf = vae.config.scaling_factor
    f = models.vae_factor
    latents = (0.8 * torch.randn(1, 4, s // f, 2 * s // f, generator=torch.Generator().manual_seed(1))).to(
        run.device, dtype)
    if what == "encode":
        def ours():
            return encode(vae, pixels, torch.Generator().manual_seed(0))

        def bare():
            return vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0)) * sf
        shape = list(pixels.shape)
    else:
        def ours():
            return decode(vae, latents)

        def bare():
            return vae.decode(latents / sf).sample
        shape = list(latents.shape)
    return _measure(run, ours, lambda: bare, timed, weights=weights_mib(vae), shape=shape,
                    bare_is="diffusers AutoencoderKL." + what)


def check_encoder(run: Run, models: Models, inputs: Inputs, dtype, timed: bool, name: str) -> dict:
    from pcdms_core import preprocess

    enc = _prepared(run, models, name, dtype)
    pixels = preprocess(inputs.source, inputs.size).to(run.device, dtype)
    return _measure(run, lambda: enc(pixels), None, timed, weights=weights_mib(enc), shape=list(pixels.shape),
                    bare_is=None)


def check_prior(run: Run, models: Models, inputs: Inputs, dtype, timed: bool) -> dict:
    import torch

    from pcdms_core import sample_prior

    prior = _prepared(run, models, "prior", dtype)
    with Capture(prior) as call:
        latents = sample_prior(prior, inputs.embedding, inputs.source_pose, inputs.target_pose, steps=2, generator=0)
    args, kwargs = call.args, call.kwargs
    blocks = torch.nn.Sequential(*prior.transformer_blocks, prior.norm_out)
    with Capture(prior.transformer_blocks[0], pre=True) as tokens:
        prior(*args, **kwargs)
    h = tokens.args[0]
    return _measure(run, lambda: prior(*args, **kwargs), lambda: lambda: blocks(h), timed, weights=weights_mib(prior),
                    shape=list(h.shape), bare_is="the prior's transformer blocks and final norm",
                    finite_extra=all_finite(latents))


def check_unet(run: Run, models: Models, inputs: Inputs, dtype, timed: bool, name: str) -> dict:
    import torch

    from pcdms_core import diffusers_glue as glue
    from pcdms_core import sample_inpaint, sample_refine

    model = _prepared(run, models, name, dtype)
    s = models.half
    f = models.vae_factor
    codec = NoVAE(f, run.device, dtype)
    gen = torch.Generator().manual_seed(2)
    tokens = inputs.tokens
    guidance = run.args.guidance
    with Capture(model) as call:
        if name == "inpaint":
            masked = torch.randn(1, 4, s // f, 2 * s // f, generator=gen)
            latents = sample_inpaint(model, codec, inputs.source, inputs.source_skeleton, inputs.target_skeleton,
                                     tokens, inputs.embedding, size=inputs.size, steps=1, guidance_scale=guidance,
                                     generator=0, masked_latents=masked, decode=False).latents
        else:
            coarse = torch.randn(1, 4, s // f, s // f, generator=gen)
            latents = sample_refine(model, codec, inputs.source, tokens, size=inputs.size, steps=1,
                                    guidance_scale=guidance, generator=0, coarse_latents=coarse, decode=False).latents
    args, kwargs = call.args, call.kwargs
    sample, t, context = args[:3]
    labels = args[4] if name == "inpaint" and len(args) > 4 else None

    def make_bare():
        with torch.device(run.device):
            bare = glue.build_unet(dict(model.unet.config)).to(dtype).eval().requires_grad_(False)
        bare.load_state_dict(model.unet.state_dict())
        return lambda: bare(sample, t, encoder_hidden_states=context, class_labels=labels).sample
    return _measure(run, lambda: model(*args, **kwargs), make_bare, timed, weights=weights_mib(model),
                    shape=list(sample.shape), bare_is="diffusers UNet2DConditionModel, same weights and inputs",
                    finite_extra=all_finite(latents))


def _measure(run: Run, ours, make_bare, timed: bool, *, weights: float, shape: list, bare_is,
             finite_extra=True) -> dict:
    """One call of ``ours`` for its output and peak memory; then (``timed``) ``make_bare()`` gives the bare call,
    made only now so that a network of its own is not in that peak, and the two are timed."""
    before = run.allocated_mib()
    run.reset_peak()
    out = ours()
    peak = run.peak_mib()
    result = {"output": out, "finite_extra": finite_extra, "weights_mib": weights, "input_shape": shape,
              "peak_mib": peak, "activations_mib": (peak - before) if peak is not None else None,
              "bare": bare_is}
    if timed:
        result["ours_ms"], result["bare_ms"] = run.time_pair(ours, make_bare() if make_bare else None)
    return result


STAGE_CHECKS = {
    "vae_encode": partial(check_vae, what="encode"),
    "vae_decode": partial(check_vae, what="decode"),
    "clip": partial(check_encoder, name="clip"),
    "dino": partial(check_encoder, name="dino"),
    "prior": check_prior,
    "inpaint": partial(check_unet, name="inpaint"),
    "refine": partial(check_unet, name="refine"),
}


# --- the paper path, stage by stage --------------------------------------------------------------------------------

def check_path(run: Run, models: Models, inputs: Inputs, dtype_name: str) -> None:
    if not run.budget.allows():
        run.add({"stage": "path", "dtype": dtype_name, "finite": None,
                 "note": f"skipped: time budget ({run.budget.left():.0f} s left)"})
        return
    t0 = time.perf_counter()
    host: dict = {}
    try:
        row = paper_path(run, models, inputs, dtype_name, host)
    except Exception as exc:  # noqa: BLE001 - recorded as the path's result
        row = failure("path", dtype_name, exc)
    finally:
        for model in host.values():
            model.to("cpu")
        host.clear()
        run.free(collect=True)
    run.budget.took(time.perf_counter() - t0)
    run.add(row)


def paper_path(run: Run, models: Models, inputs: Inputs, dtype_name: str, host: dict) -> dict:
    """DINOv2 -> CLIP -> prior -> stage 2 (VAE encode, sampling, decode) -> stage 3 (likewise), each model on the
    GPU only for its part (the VAE for stages 2 and 3 together), with the stage functions of ``pcdms_core``.
    ``host`` receives the models (kept on the CPU between their parts)."""
    torch = run.torch
    from pcdms_core import (decode, decode_canvas, encode_canvas, encode_coarse, sample_inpaint, sample_prior,
                            sample_refine, to_uint8)

    t_build = time.perf_counter()
    dtype = dtype_of(dtype_name)
    for name in ("dino", "clip", "prior", "inpaint", "refine", "vae"):  # built on the device, then kept on the CPU
        host[name] = models.build(name).to(dtype).to("cpu")
        run.free()
    build_s = time.perf_counter() - t_build
    steps, guidance, seed = max(run.args.steps, 2), run.args.guidance, 42
    parts: dict[str, float | None] = {}
    stamps: dict[str, list[float]] = {}
    finite = []

    def stamp(stage):
        def cb(info):
            run.sync()
            stamps.setdefault(stage, []).append(time.perf_counter())
            finite.append(all_finite(info.latents))
        return cb

    class Part:
        """One part of the path: its models moved to the device before and back after; its peak."""

        def __init__(self, name, *models_needed):
            self.name, self.models = name, models_needed

        def __enter__(self):
            for m in self.models:
                m.to(run.device)
            run.reset_peak()

        def __exit__(self, *exc):
            parts[self.name] = run.peak_mib()
            for m in self.models:
                m.to("cpu")
            run.free()

    with warnings.catch_warnings(), torch.no_grad():
        if not run.cuda:
            warnings.filterwarnings("ignore", message="PCDMs: a model runs in")
        t0 = time.perf_counter()
        size = inputs.size
        with Part("dinov2", host["dino"]):
            tokens = host["dino"].encode(inputs.source, size)
        with Part("clip", host["clip"]):
            clip_embedding = host["clip"].encode(inputs.source, size)
        with Part("prior", host["prior"]):
            embedding = sample_prior(host["prior"], clip_embedding, inputs.source_pose, inputs.target_pose,
                                     steps=steps, generator=seed, callback=stamp("prior"))
        vae = host["vae"].to(run.device)  # one VAE for stages 2 and 3, as the pipeline keeps it
        gen = torch.Generator().manual_seed(seed)
        with Part("stage 2 VAE encode"):
            masked = encode_canvas(vae, inputs.source, size, gen)
        with Part("stage 2 sampling", host["inpaint"]):
            latents = sample_inpaint(host["inpaint"], vae, inputs.source, inputs.source_skeleton,
                                     inputs.target_skeleton, tokens, embedding, size=size, steps=steps,
                                     guidance_scale=guidance, generator=gen, masked_latents=masked,
                                     callback=stamp("inpaint"), decode=False).latents
        with Part("stage 2 VAE decode"):
            coarse = decode_canvas(vae, latents).target
        gen = torch.Generator().manual_seed(seed)
        with Part("stage 3 VAE encode"):
            coarse_u8 = to_uint8(coarse)
            coarse_latents = encode_coarse(vae, coarse_u8, size, gen)
        with Part("stage 3 sampling", host["refine"]):
            latents3 = sample_refine(host["refine"], vae, coarse_u8, tokens, size=size, steps=steps,
                                     guidance_scale=guidance, generator=gen, coarse_latents=coarse_latents,
                                     callback=stamp("refine"), decode=False).latents
        with Part("stage 3 VAE decode"):
            image = decode(vae, latents3)
        run.sync()
        total = time.perf_counter() - t0
    median_step = {k: statistics.median([(b - a) * 1000 for a, b in zip(v, v[1:])]) for k, v in stamps.items()
                   if len(v) > 1}
    ok = all(finite) and all_finite(tokens, clip_embedding, embedding, masked, latents, coarse, coarse_latents,
                                     latents3, image)
    peaks = [p for p in parts.values() if p is not None]
    row = {"stage": "path", "dtype": dtype_name, "finite": ok, "total_s": total, "build_s": build_s,
           "steps": steps, "guidance": guidance, "peak_mib": max(peaks) if peaks else None,
           "weights_mib": weights_mib(*host.values()),
           "peak_mib_by_part": parts, "sampler_step_ms": median_step,
           "note": f"{total:.2f} s, {steps} steps a stage; sampler step ms: "
                   + ", ".join(f"{k} {v:.1f}" for k, v in median_step.items())}
    return row


# --- ComfyUI's own sampler (nodes/native.py) -----------------------------------------------------------------------

def _import_pack():
    """This repository as the ComfyUI package ComfyUI would import (``nodes/`` imports ``..pcdms_core``)."""
    import importlib.util

    name = "ComfyUI_PCDMs_gpu_check"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[name] = pack
    spec.loader.exec_module(pack)
    return pack


def native_check(run: Run) -> dict | list[dict]:
    """The native ComfyUI path on stage 2 (``nodes/native.py``): ComfyUI's own sampler (``comfy.sample.sample``,
    what KSampler calls: euler, normal schedule, ``--steps`` steps, the run's guidance) driving our paper stage-2
    UNet rebuilt as a ComfyUI model, under ComfyUI's model management, one row per dtype: finite, milliseconds per
    step (after a warm-up run) and peak memory of the sampling.

    Needs ComfyUI's source importable with its requirements (torchvision among them): ``--comfyui PATH`` (the
    folder holding ``comfy/``) is put on ``sys.path``."""
    args = run.args
    if args.comfyui:
        sys.path.insert(0, str(Path(args.comfyui).resolve()))
    try:
        import comfy.cli_args
    except ImportError:
        return {"finite": None, "note": NATIVE_SKIPPED}
    comfy.cli_args.args.cpu = not run.cuda
    try:
        import comfy.model_management as mm
        import comfy.sample

        native = _import_pack().nodes.native
    except ImportError as exc:
        return {"finite": None, "note": f"skipped: ComfyUI's source was found but does not import ({exc}); it needs "
                                        "its requirements.txt installed (torchvision included)"}
    torch = run.torch
    from pcdms_core.stages.conditions import StageConditions

    models = Models(args.size, "cpu")  # ComfyUI moves it where it decides
    half, f = models.half, models.vae_factor
    g = torch.Generator().manual_seed(0)
    h, w = half // f, half // f
    conds = StageConditions(
        context=torch.randn(1, 258, models.unet["inpaint"]["cross_attention_dim"], generator=g),
        uncond_context=torch.zeros(1, 258, models.unet["inpaint"]["cross_attention_dim"]),
        concat=torch.cat([torch.ones(1, 1, h, 2 * w), torch.randn(1, 4, h, 2 * w, generator=g)], dim=1),
        uncond_concat=torch.cat([torch.ones(1, 1, h, 2 * w), torch.randn(1, 4, h, 2 * w, generator=g)], dim=1),
        latent_shape=(1, 4, h, 2 * w), pose=torch.rand(1, 3, half, 2 * half, generator=g) * 2 - 1,
        class_label=torch.randn(1, models.embed_dim, generator=g), uncond_class_label=torch.zeros(1, models.embed_dim))
    positive, negative = native._conditioning(conds, "inpaint", "paper")
    latent = torch.zeros(conds.latent_shape)
    noise = torch.randn(conds.latent_shape, generator=g)
    rows = []
    for name in args.dtype_list:
        if not run.budget.allows():
            rows.append({"dtype": name, "finite": None, "note": f"skipped: time budget ({run.budget.left():.0f} s left)"})
            continue
        patcher = native.native_from_core(models.build("inpaint"), name)

        def sample(steps, patcher=patcher):
            return comfy.sample.sample(patcher, noise, steps, args.guidance, "euler", "normal", positive, negative,
                                       latent, disable_pbar=True, seed=0)

        sample(1)  # loads the model, warms up
        run.reset_peak()
        t0 = time.perf_counter()
        out = sample(args.steps)
        run.sync()
        ms = (time.perf_counter() - t0) * 1000 / args.steps
        rows.append({"dtype": name, "finite": all_finite(out), "ours_ms": ms, "peak_mib": run.peak_mib(),
                     "weights_mib": patcher.model_size() / 2**20,
                     "note": f"KSampler euler/normal, {args.steps} steps, cfg {args.guidance:g}; "
                             f"UNet {patcher.model.get_dtype()}"})
        mm.unload_all_models()
        del patcher
        run.free(collect=True)
    return rows


def run_native(run: Run) -> None:
    if not run.budget.allows():
        run.add({"stage": "native", "dtype": "-", "finite": None,
                 "note": f"skipped: time budget ({run.budget.left():.0f} s left)"})
        return
    t0 = time.perf_counter()
    try:
        rows = native_check(run)
    except Exception as exc:  # noqa: BLE001 - a broken native path is a result, not a crash of the whole check
        rows = {"finite": False, "note": f"failed: {type(exc).__name__}: {exc}"}
    run.budget.took(time.perf_counter() - t0)
    for row in rows if isinstance(rows, list) else [rows]:
        run.add({"stage": "native", "dtype": row.pop("dtype", "-"), **row})


# --- the table -----------------------------------------------------------------------------------------------------

COLUMNS = [("stage", 28), ("dtype", 5), ("finite", 6), ("ours ms", 9), ("bare ms", 9), ("ratio", 6),
           ("peak MiB", 9), ("rel err", 8)]


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_row(row: dict) -> str:
    cells = [row.get("label", row["stage"]), row["dtype"],
             "-" if row.get("finite") is None else str(row["finite"]),
             _fmt(row.get("ours_ms"), ".2f"), _fmt(row.get("bare_ms"), ".2f"), _fmt(row.get("ratio"), ".3f"),
             _fmt(row.get("peak_mib"), ".0f"), _fmt(row.get("err_vs_fp32"), ".1e")]
    line = " ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))
    return line + ("  " + row["note"] if row.get("note") else "")


def print_table(header: dict, rows: list[dict]) -> None:
    print()
    print(f"machine: {machine_line(header['machine'])}")
    print(f"date: {header['date']}")
    print(f"command: {header['command']}")
    print(header["setting"])
    print(" ".join(n.ljust(w) if i < 3 else n.rjust(w) for i, (n, w) in enumerate(COLUMNS)))
    for row in rows:
        print(format_row(row))
    print("ours ms: one step as the samplers call it (median); bare ms: the bare network on the same inputs; "
          "ratio ours / bare;\npeak MiB: torch.cuda.max_memory_allocated of that step, weights included (the path: "
          "its largest part); rel err: relative L2 error against the same stage in fp32.")


# --- main ----------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-deps", action="store_true", help="list what the run needs and what is missing, then exit")
    ap.add_argument("--wheels", metavar="DIR", help="install the wheels in DIR first (no network needed)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--size", choices=["official", "tiny"], default="official",
                    help="official: 512 x 512 per half, the released topologies; tiny: the parity set's small "
                         "configs (seconds)")
    ap.add_argument("--dtypes", help="comma-separated, of fp16, bf16, fp32 (CPU: fp32, bf16); default: fp16,bf16 on "
                                     "cuda, fp32 on cpu")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)} (default all)")
    ap.add_argument("--steps", type=int, default=4, help="sampling steps a stage in the paper path (default 4)")
    ap.add_argument("--guidance", type=float, default=2.0, help="guidance of stages 2 and 3 (default 2: batch 2)")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls of each step (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="calls before timing (default 2)")
    ap.add_argument("--time-budget", type=float, default=420.0,
                    help="seconds for the whole run, imports included (default 420); items are skipped past it")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--comfyui", metavar="PATH", help="ComfyUI's source folder, for the native KSampler check")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--poison", choices=sorted(Models.SEEDS), help=argparse.SUPPRESS)  # tests: a NaN weight
    args = ap.parse_args(argv)
    args.dtypes = args.dtypes or ("fp16,bf16" if args.device == "cuda" else "fp32")
    args.dtype_list = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    allowed = {"cuda": ("fp16", "bf16", "fp32"), "cpu": ("fp32", "bf16")}[args.device]
    bad = [d for d in args.dtype_list if d not in allowed]
    if bad or not args.dtype_list:
        ap.error(f"--dtypes on {args.device}: choose from {', '.join(allowed)} (got {args.dtypes!r})")
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stage_list if s not in STAGES]
    if unknown:
        ap.error(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.repeat < 1 or args.warmup < 0 or args.steps < 1:
        ap.error("--repeat and --steps must be 1 or more, --warmup 0 or more")
    return args


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    args.started = started
    if args.wheels:
        print(f"wheels from {args.wheels} installed into {install_wheels(args.wheels)}", flush=True)
    deps = check_deps()
    missing = [e["package"] for e in deps if not e["ok"]]
    if args.check_deps or missing:
        print(f"Python {platform.python_version()} at {sys.executable}; the repository: {ROOT}")
        print_deps(deps)
        if missing:
            if any(m.startswith("pcdms_core") for m in missing):
                print(f"pcdms_core did not import from {ROOT}: run this script from a whole checkout of the "
                      "repository (benchmarks/gpu_check.py inside it).")
            print(how_to_bring([m for m in missing if not m.startswith("pcdms_core")]))
            return 2
        import torch

        if torch.cuda.is_available():
            print(f"  CUDA: {torch.cuda.get_device_name(0)}, torch CUDA {torch.version.cuda}, "
                  f"bf16 supported: {torch.cuda.is_bf16_supported()}")
        else:
            print("  CUDA: not available to this torch (--device cpu only)")
        print("everything needed is there")
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: this torch sees no CUDA device (use --device cpu, or the Python that has CUDA)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        # Random weights make some attention probabilities denormal; a CPU then runs the layers around them tens of
        # times slower (GPUs do not), which would time the denormals, not the stages.
        torch.set_flush_denormal(True)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" at every cast
    size_words = ("official size (512 x 512 per half, canvas 512 x 1024)" if args.size == "official"
                  else "tiny size (the parity set's configs, 64 x 64 per half)")
    header = {
        "machine": machine(args.device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "setting": f"{size_words}, random weights, {args.device}, guidance {args.guidance:g} (stages 2, 3), "
                   f"{args.repeat} timed calls after {args.warmup} warm-up, path {max(args.steps, 2)} steps a stage",
        "args": {k: v for k, v in vars(args).items() if k not in ("started",)},
        "deps": deps,
    }
    run = Run(args, header)
    models = Models(args.size, run.device, args.poison)
    inputs = Inputs(models)
    gc.freeze()  # the modules imported so far stay: each gc.collect then looks at the new objects alone
    print(f"{machine_line(header['machine'])}\n{header['setting']}", flush=True)
    for stage in args.stage_list:
        if stage in STAGE_CHECKS:
            check_stage(run, models, inputs, stage)
        elif stage == "path":
            for dtype_name in args.dtype_list:
                check_path(run, models, inputs, dtype_name)
        elif stage == "native":
            run_native(run)
    header["elapsed_s"] = time.perf_counter() - started
    run.write_json()
    print_table(header, run.rows)
    print(f"elapsed: {header['elapsed_s']:.1f} s")
    bad = [f"{r['label']} {r['dtype']}" for r in run.rows if r.get("finite") is False]
    broken = [f"{r['label']} {r['dtype']}" for r in run.rows if r.get("error") and r.get("finite") is not False]
    if bad:
        print("NOT FINITE: " + ", ".join(bad))
    if broken:
        print("FAILED: " + ", ".join(broken))
    return 1 if bad or broken else 0


if __name__ == "__main__":
    sys.exit(main())
