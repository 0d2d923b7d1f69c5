"""Wall time and peak memory of the command line's paper path, end to end, in any checkout of this repository:
the same command on two checkouts (for example before and after a change) on the same machine, back to back.

    python benchmarks/cli_e2e.py --repo . --steps 20 --json benchmarks/results/e2e_after.json
    python benchmarks/cli_e2e.py --repo /path/to/older/checkout --steps 20

It runs ``python -m pcdms_core generate`` in a fresh process (``PYTHONPATH`` = the checkout) at the official size
(512 x 512 per half) with the random official-size models of ``bench.py`` (made once into ``benchmarks/cache``),
the prior, inpainting and refining stages each with ``--steps`` steps, stages 2 and 3 with guidance 2, and prints
the machine, the date, the command and the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402


def run(repo: Path, steps: int, threads: int, out: Path) -> dict:
    files = bench._model_files("official")
    st = {k: str(v.with_suffix(".safetensors")) for k, v in files.items() if k in ("prior", "inpaint", "refine")}
    cmd = [sys.executable, "-m", "pcdms_core", "generate",
           "--source", str(bench.EXAMPLES / "pcdms_example_source.png"),
           "--source-pose", str(bench.EXAMPLES / "pcdms_example_source_pose.json"),
           "--target-pose", str(bench.EXAMPLES / "pcdms_example_target_pose.json"),
           "--prior", st["prior"], "--inpaint", st["inpaint"], "--refine", st["refine"],
           "--clip", str(files["clip"]), "--dino", str(files["dino"]), "--vae", str(files["vae"]),
           "--size", "512", "--device", "cpu", "--seed", "0", "--quiet",
           "--prior-steps", str(steps), "--inpaint-steps", str(steps), "--refine-steps", str(steps),
           "--inpaint-guidance", "2", "--refine-guidance", "2", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not that of the model-making one
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(err.read().decode()[-3000:])
    return {"seconds": seconds, "peak_gib": usage.ru_maxrss / 2**20,
            "commit": subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(HERE.parent), help="the checkout whose pcdms_core runs (default: this one)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = HERE / "cache" / "cli_e2e_result.png"
    row = run(Path(args.repo).resolve(), args.steps, args.threads, out)
    header = {"machine": bench.machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    for k, v in header.items():
        print(f"{k}: {v}")
    print(f"checkout {args.repo} at {row['commit']}: paper path, 512 x 512, {args.steps} steps a stage: "
          f"{row['seconds']:.1f} s, peak {row['peak_gib']:.2f} GiB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "args": vars(args), **row}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
