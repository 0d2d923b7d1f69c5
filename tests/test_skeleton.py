"""The numpy skeleton renderer against pose images the official code drew with OpenCV 4.10 (no cv2 needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcdms_core.pose.render import draw_skeleton

INPUTS = Path(__file__).parent / "fixtures" / "parity" / "inputs"


def _load_keypoints(path: Path) -> tuple[int, int, list[tuple[np.ndarray, np.ndarray]]]:
    """POSE_KEYPOINT json (pixel coordinates, c == 0 missing) -> canvas size and normalised bodies."""
    frame = json.loads(path.read_text())[0]
    w, h = int(frame["canvas_width"]), int(frame["canvas_height"])
    bodies = []
    for person in frame["people"]:
        k = np.asarray(person["pose_keypoints_2d"], dtype=np.float64).reshape(18, 3)
        bodies.append((np.stack([k[:, 0] / w, k[:, 1] / h], axis=1), k[:, 2] != 0))
    return w, h, bodies


@pytest.mark.parametrize("name", ["pose_a", "pose_b", "pose_t1", "pose_t2"])
def test_fixture_pose_images_reproduced_exactly(name: str) -> None:
    w, h, bodies = _load_keypoints(INPUTS / f"{name}.json")
    expected = np.asarray(Image.open(INPUTS / f"{name}.png").convert("RGB"))
    out = draw_skeleton(w, h, bodies)
    assert out.shape == expected.shape
    assert np.array_equal(out, expected), f"{int((out != expected).any(axis=2).sum())} pixels differ"


def test_shape_and_dtype() -> None:
    w, h, bodies = _load_keypoints(INPUTS / "pose_a.json")
    for width, height in [(176, 256), (17, 23), (1, 1), (512, 384)]:
        out = draw_skeleton(width, height, bodies)
        assert out.shape == (height, width, 3)
        assert out.dtype == np.uint8


def test_empty_pose_is_black() -> None:
    assert not draw_skeleton(64, 48, []).any()
    joints = np.random.default_rng(0).uniform(0, 1, size=(18, 2))
    assert not draw_skeleton(64, 48, [(joints, np.zeros(18, dtype=bool))]).any()


def test_joints_outside_canvas_do_not_crash() -> None:
    rng = np.random.default_rng(1)
    joints = rng.uniform(0.2, 0.8, size=(18, 2))
    joints[3] = (-0.5, 0.4)
    joints[4] = (2.5, -1.0)
    joints[10] = (40.0, -30.0)
    hand = rng.uniform(-0.5, 1.5, size=(21, 2))
    out = draw_skeleton(64, 48, [(joints, np.ones(18, dtype=bool))], [hand])
    assert out.shape == (48, 64, 3) and out.any()
    far = np.full((18, 2), -3.0)
    assert not draw_skeleton(64, 48, [(far, np.ones(18, dtype=bool))]).any()
