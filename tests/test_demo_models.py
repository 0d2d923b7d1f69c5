"""The bundled demo models: present, small, the default of the CLI, and they really move a person into a
new pose (checked on the bundled example, whose ground truth the synthetic set gives us)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pcdms_core import bundled
from pcdms_core.train import metrics
from pcdms_core import images as im
from pcdms_core.loading.checkpoints import inspect_checkpoint, load_checkpoint
from pcdms_core.pose.keypoints import load_pose
from pcdms_core.train.synthetic import SyntheticPairs

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pcdms_core" / "demo_models" / "examples"


def test_demo_models_are_complete_and_small():
    assert bundled.has_demo_models(), [k for k in bundled.FILES if not bundled.demo_file(k).exists()]
    total = sum(bundled.demo_file(k).stat().st_size for k in bundled.FILES)
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"
    assert inspect_checkpoint(bundled.demo_file("inpaint")).variant == "paper"
    assert inspect_checkpoint(bundled.demo_file("inpaint_noprior")).variant == "noprior"
    assert inspect_checkpoint(bundled.demo_file("refine")).stage == "refine"
    assert inspect_checkpoint(bundled.demo_file("prior")).stage == "prior"


def test_example_assets_are_the_synthetic_pair():
    """The bundled examples are scripts/make_assets.py's output: the held-out pair the generate command runs by default."""
    import scripts.make_assets as make_assets  # noqa: F401  (importable; writes nothing on import)

    pair = SyntheticPairs(seed=make_assets.SEED)[make_assets.PAIR]
    assert torch.equal(im.as_uint8_batch(Image.open(ASSETS / "pcdms_example_source.png"))[0], pair.source)
    pose = load_pose(ASSETS / "pcdms_example_target_pose.json")
    assert abs(pose.xy - pair.target_pose.xy).max() < 1e-6


def test_readme_main_command_moves_the_person(tmp_path):
    out = tmp_path / "result.png"
    cmd = [sys.executable, "-m", "pcdms_core", "generate", "--source", str(ASSETS / "pcdms_example_source.png"),
           "--source-pose", str(ASSETS / "pcdms_example_source_pose.json"),
           "--target-pose", str(ASSETS / "pcdms_example_target_pose.json"), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    result = im.as_uint8_batch(Image.open(out))
    assert result.shape == (1, 3, 128, 128)
    import scripts.make_assets as make_assets

    pair = SyntheticPairs(seed=make_assets.SEED)[make_assets.PAIR]
    truth, mask = pair.target[None], pair.target_mask[None]
    # closer to the person in the target pose than the unchanged source is
    assert metrics.masked_colour_error(result, truth, mask) < metrics.masked_colour_error(pair.source[None], truth, mask)


def test_evaluation_runs_and_writes_its_table(tmp_path):
    from pcdms_core.train.evaluation import demo_pipeline, evaluate

    noprior = load_checkpoint(bundled.demo_file("inpaint_noprior"), expect="inpaint")
    result = evaluate(demo_pipeline(), tmp_path, count=2, batch_size=2, steps={"prior": 2, "inpaint": 2, "refine": 2},
                      progress=False, noprior=noprior)
    assert set(result["metrics"]) == {"source copy", "stage 2, zeroed embedding", "stage 2", "stages 1-3",
                                      "stage 2 without the prior"}
    assert all(0 < m["ssim"] < 1 and m["colour_error"] > 0 for m in result["metrics"].values())
    # the demo models' sampler settings, with the step counts overridden
    assert result["settings"]["inpaint"] == dict(bundled.SAMPLING["inpaint"], steps=2)
    assert result["settings"]["refine"] == dict(bundled.SAMPLING["refine"], steps=2)
    assert bundled.SAMPLING["inpaint"]["scheduler"] in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.md").read_text().count("|") > 20
    w, h = bundled.SIZE
    assert Image.open(tmp_path / "grid.png").size == (5 * w, 2 * h)


@pytest.mark.slow
def test_the_stage_ablation_holds_on_held_out_pairs(tmp_path):
    """The table of docs/demo-models.md, on all its 200 held-out pairs with the demo settings (minutes on 2 cores; on
    fewer pairs the colour margins are within the pairs' spread): the three stages beat both baselines, the copied
    source and stage 2 alone, on both measures, and stage 2 with the prior's embedding beats stage 2 with a zeroed
    one: the paper's stage ablation, in miniature. And the table's figures are the ones these files give."""
    from pcdms_core.train.evaluation import demo_pipeline, evaluate

    noprior = load_checkpoint(bundled.demo_file("inpaint_noprior"), expect="inpaint")
    m = evaluate(demo_pipeline(), tmp_path, count=200, batch_size=25, progress=False, noprior=noprior)["metrics"]
    # the table of docs/demo-models.md is what these files give (to float rounding across CPUs)
    readme = (ROOT / "docs" / "demo-models.md").read_text()
    for method, scores in m.items():
        row = re.search(rf"^\| {re.escape(method)} \| ([0-9.]+) \| ([0-9.]+) \|", readme, re.M)
        assert row, f"docs/demo-models.md has no row for {method!r}"
        assert abs(float(row[1]) - scores["ssim"]) < 2e-3 and abs(float(row[2]) - scores["colour_error"]) < 0.05, \
            (method, row[0], scores)
    full, stage2, zeroed = m["stages 1-3"], m["stage 2"], m["stage 2, zeroed embedding"]
    for baseline in ("source copy", "stage 2"):
        assert full["ssim"] > m[baseline]["ssim"] and full["colour_error"] < m[baseline]["colour_error"], (baseline, m)
    assert stage2["ssim"] > zeroed["ssim"] and stage2["colour_error"] < zeroed["colour_error"], m
    assert stage2["ssim"] > m["source copy"]["ssim"], m


def _script_commands(text: str, env: dict) -> list[list[str]]:
    """The `py ...` / `ddp ...` commands of a shell script, continuation lines joined and variables filled in."""
    import shlex

    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("py", "ddp"):
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], line)
            commands.append(shlex.split(line)[1:])
    return commands


def test_the_demo_training_script_runs_only_valid_commands(monkeypatch):
    """scripts/train_demo_models.sh takes two hours, so no test runs it; each of its commands is parsed by the
    CLI here, and each training command builds its TrainConfig (which refuses conflicting options)."""
    from pcdms_core import cli
    from pcdms_core.train import training

    configs = []
    monkeypatch.setattr(training, "train", lambda cfg: configs.append(cfg) or "trained")
    commands = _script_commands((ROOT / "scripts" / "train_demo_models.sh").read_text(),
                                {"RUNS": "runs", "D": "pcdms_core/demo_models", "VAE_MP": "bf16"})
    names = [c[0] for c in commands]
    assert names.count("train") == 8 and {"init-encoders", "make-coarse", "evaluate"} <= set(names), names
    for argv in commands:
        if argv[0] == "train":  # parsed by main, which builds the TrainConfig
            assert cli.main(argv) == 0
        else:
            cli._parser().parse_args(argv)
    assert [c.stage for c in configs] == ["vae", "vae", "prior", "inpaint", "inpaint", "refine", "refine", "inpaint"]
    # every shipped file is the export of one of them
    exported = {c.export_to for c in configs if c.export_to}
    assert exported == {f"pcdms_core/demo_models/{bundled.FILES[k]}" for k in ("vae", "prior", "inpaint", "refine", "inpaint_noprior")}
