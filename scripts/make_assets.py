"""Write the example inputs in pcdms_core/demo_models/examples/ (what the workflows and the README's main command use) from the
synthetic set, deterministically:

    python scripts/make_assets.py

pcdms_example_source.png / _source_pose.json: a person and their keypoints (POSE_KEYPOINT, pixels);
_target_pose.json / .png: another pose of the same person (keypoints, and the skeleton as stage 2 reads it);
_pose_photo.png: someone else in another pose (for the DWPose workflow). Pairs of a held-out seed, so the
demo models never saw them.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdms_core import images as im  # noqa: E402
from pcdms_core.pose.keypoints import render_pose  # noqa: E402
from pcdms_core.train.synthetic import SyntheticPairs  # noqa: E402

SEED, PAIR, PHOTO_PAIR = 20261124, 7, 10


def main() -> None:
    out = ROOT / "pcdms_core" / "demo_models" / "examples"
    pairs = SyntheticPairs(seed=SEED)
    pair, photo = pairs[PAIR], pairs[PHOTO_PAIR]
    im.to_pil(pair.source)[0].save(out / "pcdms_example_source.png")
    im.to_pil(photo.target)[0].save(out / "pcdms_example_pose_photo.png")
    im.to_pil(render_pose(pair.target_pose))[0].save(out / "pcdms_example_target_pose.png")
    for name, pose in (("source_pose", pair.source_pose), ("target_pose", pair.target_pose)):
        (out / f"pcdms_example_{name}.json").write_text(json.dumps([pose.to_pose_keypoint()], indent=1) + "\n")
    im.to_pil(pair.target)[0].save(ROOT / "benchmarks" / "example_target_ground_truth.png")


if __name__ == "__main__":
    main()
