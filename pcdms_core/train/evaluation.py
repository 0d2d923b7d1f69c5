"""The evaluation on held-out synthetic pairs: the paper's stage ablation, in miniature.

For every pair it runs the three stages and compares, against the ground-truth target:

* ``source copy``: the source image as it is (a baseline);
* ``stage 2``: the coarse image (prior embedding -> inpainting), without refining (a baseline);
* ``stage 2, zeroed embedding``: inpainting with the prior's embedding replaced by zeros (the ablation);
* ``stages 1-3``: the full pipeline;
* ``stage 2 without the prior``: when a no-prior inpainting model is given, that model alone.

Metrics: SSIM (the official form), colour error inside the target person, LPIPS when available locally. It
writes ``results.json``, ``results.md`` (a table) and ``grid.png`` (source, target pose, stage 2, stage 3,
ground truth).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from .. import bundled
from ..cpu import speed_up
from .. import images as im
from . import metrics
from ..pipeline import PCDMsPipeline, StageSettings
from .synthetic import SyntheticPairs
from .training import SyntheticData

EVAL_SEED = 1_000_003  # held out: the training data uses small seeds
METHODS = ("source copy", "stage 2, zeroed embedding", "stage 2", "stages 1-3")
NOPRIOR = "stage 2 without the prior"


@torch.no_grad()
def evaluate(pipe: PCDMsPipeline, out, *, count: int = 200, seed: int = EVAL_SEED, size=bundled.SIZE,
             batch_size: int = 25, settings: Optional[dict] = None, steps: Optional[dict] = None,
             progress: bool = True, noprior=None) -> dict:
    """``settings``: per stage ("inpaint", "refine"), the sampler's ``scheduler``, ``steps`` and
    ``guidance_scale``, and stage 3's ``strength`` (default: ``bundled.SAMPLING``); ``steps`` overrides the step
    counts (the prior's is 20). ``noprior``: a demo-variant inpainting model (no prior input) to score too, with
    stage 2's settings and seeds."""
    from tqdm.auto import tqdm

    settings = {k: dict(v) for k, v in (settings or bundled.SAMPLING).items()}
    steps = {"prior": 20, **{k: v["steps"] for k, v in settings.items()}, **(steps or {})}
    for stage in settings:
        settings[stage]["steps"] = steps[stage]
    data = SyntheticData(seed, tuple(size))
    lp = metrics.lpips_model()
    methods = METHODS + ((NOPRIOR,) if noprior is not None else ())
    scores: dict[str, dict[str, list]] = {m: {"ssim": [], "colour_error": [], "lpips": []} for m in methods}
    grid_rows = []
    # the pipeline's own stage methods (the one chain), each stage seeded per batch
    prior_settings = StageSettings(steps=steps["prior"])
    inpaint_settings = StageSettings(**settings["inpaint"])
    refine_settings = StageSettings(**settings["refine"])
    without_prior = replace(pipe, inpaint=noprior, uses_prior=False) if noprior is not None else None
    size = tuple(size)
    for first in tqdm(range(0, count, batch_size), desc="evaluate", disable=not progress):
        b = data.batch(list(range(first, min(count, first + batch_size))))
        tokens, clip_embedding = pipe.run_encoders(b.source, size)
        emb = pipe.run_prior(clip_embedding, b.source_pose, b.target_pose, prior_settings, seed=seed + first)

        def stage2(p: PCDMsPipeline, embedding) -> torch.Tensor:
            return p.run_inpaint(b.source, b.source_skeleton, b.target_skeleton, tokens, embedding, size,
                                 inpaint_settings, seed=seed + first + 1)

        coarse = stage2(pipe, emb)
        zeroed = stage2(pipe, torch.zeros_like(emb))
        refined = pipe.run_refine(coarse, tokens, size, refine_settings, seed=seed + first + 2)
        outputs = {"source copy": b.source, "stage 2, zeroed embedding": im.to_uint8(zeroed),
                   "stage 2": im.to_uint8(coarse), "stages 1-3": im.to_uint8(refined)}
        if without_prior is not None:
            outputs[NOPRIOR] = im.to_uint8(stage2(without_prior, None))
        for name, pred in outputs.items():
            scores[name]["ssim"] += metrics.ssim(pred, b.target).tolist()
            scores[name]["colour_error"] += metrics.masked_colour_error(pred, b.target, b.target_mask).tolist()
            if lp is not None:
                scores[name]["lpips"] += metrics.lpips_distance(lp, pred, b.target).tolist()
        if not grid_rows:
            for i in range(min(8, len(b.index))):
                grid_rows.append(torch.cat([b.source[i], b.target_skeleton[i], outputs["stage 2"][i],
                                            outputs["stages 1-3"][i], b.target[i]], dim=2))
    result = {
        "pairs": count, "seed": seed, "size": list(size), "steps": steps, "settings": settings,
        "metrics": {m: {k: (sum(v) / len(v) if v else None) for k, v in s.items()} for m, s in scores.items()},
        "lpips": "computed" if lp is not None else "not available (the lpips package or its weights are not installed)",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(format_table(result))
    im.to_pil(torch.cat(grid_rows, dim=1))[0].save(out / "grid.png")
    return result


def format_table(result: dict) -> str:
    lines = [
        f"{result['pairs']} held-out synthetic pairs (seed {result['seed']}), {result['size'][0]}x{result['size'][1]}; "
        f"prior {result['steps']['prior']} steps; " + "; ".join(
            f"{stage} {v['scheduler']}, {v['steps']} steps, guidance {v['guidance_scale']:g}"
            + (f", img2img strength {v['strength']:g}" if v.get("strength", 1.0) < 1.0 else "")
            for stage, v in result.get("settings", {}).items()),
        "",
        "| method | SSIM (higher is better) | colour error in the target person, 0-255 (lower is better) | LPIPS |",
        "|---|---|---|---|",
    ]
    for name, m in result["metrics"].items():
        lp = f"{m['lpips']:.4f}" if m.get("lpips") is not None else "n/a"
        lines.append(f"| {name} | {m['ssim']:.4f} | {m['colour_error']:.2f} | {lp} |")
    return "\n".join(lines) + "\n"


def demo_pipeline(device=None) -> PCDMsPipeline:
    """The demo models as a pipeline (prior, paper inpainting, refining); on a CPU with the CPU speed-ups, as
    the command line runs them."""
    on_cpu = torch.device(device or "cpu").type == "cpu"
    return PCDMsPipeline.from_files(
        prior=bundled.demo_file("prior"), inpaint=bundled.demo_file("inpaint"), refine=bundled.demo_file("refine"),
        clip=bundled.demo_file("clip"), dino=bundled.demo_file("dino"), vae=bundled.demo_file("vae"), device=device,
        prepare=speed_up if on_cpu else None,
    )


__all__ = ["evaluate", "format_table", "demo_pipeline", "SyntheticPairs", "EVAL_SEED"]
