"""Reading poses in every accepted form, choosing a person, the prior's vector, rendering and alignment."""

import json

import numpy as np
import pytest
import torch

from pcdms_core.errors import PoseError
from pcdms_core.pose.keypoints import (
    JOINT_NAMES,
    Pose,
    align_pose,
    load_pose,
    people_from_keypoints,
    pose_vector,
    render_pose,
)

from helpers import PARITY

POSE_A = json.loads((PARITY / "inputs" / "pose_a.json").read_text())


def _pixels(pose: Pose) -> np.ndarray:
    return pose.xy * np.array(pose.canvas)


def test_pose_keypoint_in_pixels():
    pose = load_pose(POSE_A)
    kps = np.array(POSE_A[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert pose.canvas == (176, 256)
    assert pose.visible.tolist() == [True] * 17 + [False]  # left ear written as 0, 0, 0
    assert pose.missing_names() == ["left_ear"]
    np.testing.assert_allclose(_pixels(pose)[:17], kps[:17, :2])


def test_pose_keypoint_normalised_is_detected():
    frame = json.loads(json.dumps(POSE_A[0]))
    kps = np.array(frame["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    kps[:, 0] /= 176
    kps[:, 1] /= 256
    frame["people"][0]["pose_keypoints_2d"] = kps.ravel().tolist()
    pose = load_pose([frame])
    np.testing.assert_allclose(pose.xy, load_pose(POSE_A).xy, atol=1e-12)


def test_openpose_json_file_body25_needs_a_canvas(tmp_path):
    body25 = np.zeros((25, 3))
    coco = np.array(POSE_A[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    idx = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    body25[idx] = coco
    body25[8] = [88, 130, 0.9]  # mid-hip, dropped
    path = tmp_path / "openpose_keypoints.json"
    path.write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": body25.ravel().tolist()}]}))
    with pytest.raises(PoseError, match="canvas"):
        load_pose(path)
    pose = load_pose(path, canvas=(176, 256))
    np.testing.assert_allclose(pose.xy, load_pose(POSE_A).xy)


def test_coco17_gets_a_neck_from_the_shoulders():
    coco18 = np.array(POSE_A[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    order17 = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]  # COCO-17 from COCO-18 indices
    coco17 = coco18[order17]
    frame = {"people": [{"pose_keypoints_2d": coco17.ravel().tolist()}], "canvas_width": 176, "canvas_height": 256}
    pose = load_pose(frame)
    px = _pixels(pose)
    np.testing.assert_allclose(px[1], (coco18[2, :2] + coco18[5, :2]) / 2)
    np.testing.assert_allclose(px[[0, 2, 5, 13]], coco18[[0, 2, 5, 13], :2])


def test_deepfashion_normalized_pose_txt():
    pose = load_pose(PARITY / "inputs" / "pose_t2.txt")
    assert not pose.visible[13] and not pose.visible[17]  # missing written as -1 -1
    assert pose.xy[0].tolist() == pytest.approx([float(v) for v in (PARITY / "inputs" / "pose_t2.txt").read_text().split()[:2]])


def test_gfla_annotation_line(tmp_path):
    ys = [14, 34, 33, 64, 92, 35, 65, 88, 96, 141, 188, 94, 142, 189, 11, 11, 12, -1]
    xs = [92, 92, 73, 67, 68, 112, 119, 116, 81, 79, 75, 104, 102, 104, 88, 96, 81, -1]
    path = tmp_path / "fasion-annotation-test.csv"
    path.write_text(f"name:keypoints_y:keypoints_x\nimg1.jpg: {ys}: {xs}\n")
    pose = load_pose(path)
    assert pose.canvas == (176, 256) and pose.visible.sum() == 17
    np.testing.assert_allclose(_pixels(pose)[4], [68, 92])


def test_pose_vector_marks_missing_joints():
    vec = pose_vector(load_pose(POSE_A))
    assert vec.shape == (1, 36) and vec.dtype == torch.float32
    assert vec[0, 34:].tolist() == [-1.0, -1.0]
    assert vec[0, 0].item() == pytest.approx(88.0 / 176)


def _two_people():
    a = POSE_A[0]["people"][0]["pose_keypoints_2d"]
    small = (np.array(a).reshape(18, 3) * [0.5, 0.5, 1]).ravel().tolist()
    return [{"people": [{"pose_keypoints_2d": small}, {"pose_keypoints_2d": a}], "canvas_width": 176, "canvas_height": 256}]


def test_several_people_largest_by_default_or_by_index():
    data = _two_people()
    people = people_from_keypoints(data)
    assert len(people) == 2
    assert load_pose(data).xy[0, 0] == pytest.approx(88 / 176)  # the full-size person
    assert load_pose(data, person=0).xy[0, 0] == pytest.approx(44 / 176)
    with pytest.raises(PoseError, match="person 5 was asked for, but the pose has 2"):
        load_pose(data, person=5)


def test_nobody_and_too_few_joints():
    with pytest.raises(PoseError, match="nobody"):
        load_pose([{"people": [], "canvas_width": 64, "canvas_height": 64}])
    sparse = [0.0] * 54
    sparse[3:6] = [10, 10, 1]
    sparse[6:9] = [20, 20, 1]
    with pytest.raises(PoseError, match="only 2 of 18 joints visible") as err:
        load_pose([{"people": [{"pose_keypoints_2d": sparse}], "canvas_width": 64, "canvas_height": 64}])
    assert "left_ear" in str(err.value)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(PoseError, match="triplets"):
        load_pose([{"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 8, "canvas_height": 8}])
    with pytest.raises(PoseError, match="animal"):
        load_pose([{"animals": [], "canvas_width": 8, "canvas_height": 8}])
    with pytest.raises(PoseError, match="not found"):
        load_pose(tmp_path / "missing.json")
    (tmp_path / "bad.txt").write_text("1 2\n3 4\n")
    with pytest.raises(PoseError, match="18 lines"):
        load_pose(tmp_path / "bad.txt")
    with pytest.raises(PoseError, match="frame 3"):
        load_pose(POSE_A, frame=3)


def test_round_trip_through_pose_keypoint():
    pose = load_pose(POSE_A)
    again = load_pose([pose.to_pose_keypoint()])
    np.testing.assert_allclose(again.xy, pose.xy)
    assert again.visible.tolist() == pose.visible.tolist()


@pytest.mark.parametrize("name", ["pose_a", "pose_b", "pose_t1", "pose_t2"])
def test_render_matches_the_official_renderings(inputs, name):
    """The fixture PNGs were drawn by the official draw_bodypose (OpenCV) at the keypoint canvas size."""
    img = render_pose(load_pose(PARITY / "inputs" / f"{name}.json"))
    expected = torch.from_numpy(np.asarray(inputs(f"{name}.png").convert("RGB")).copy()).permute(2, 0, 1)
    assert img.dtype == torch.uint8 and img.shape == expected.shape
    assert torch.equal(img, expected)


def test_render_is_aware_of_canvas_size():
    pose = load_pose(POSE_A)
    small = render_pose(pose)
    big = render_pose(pose, (352, 512))
    assert small.shape == (3, 256, 176) and big.shape == (3, 512, 352)
    # Joint discs sit at the scaled positions: the nose is drawn in its own colour (255, 0, 0).
    assert big[:, 82, 176].tolist() == [255, 0, 0]
    assert small[:, 41, 88].tolist() == [255, 0, 0]


def test_align_pose_scales_and_centres_on_the_source():
    source = load_pose(POSE_A)
    moved = Pose(xy=source.xy * 0.5 + 0.1, visible=source.visible, canvas=source.canvas)
    aligned = align_pose(moved, source)
    np.testing.assert_allclose(aligned.xy[source.visible], source.xy[source.visible], atol=1e-9)
    assert aligned.visible.tolist() == source.visible.tolist()
    # Only centring: the size stays.
    centred = align_pose(moved, source, scale=False)
    span = np.ptp(centred.xy[source.visible], axis=0)
    np.testing.assert_allclose(span, np.ptp(moved.xy[source.visible], axis=0))


def test_joint_names():
    assert len(JOINT_NAMES) == 18 and JOINT_NAMES[1] == "neck" and JOINT_NAMES[17] == "left_ear"


# --- the coordinate rules ------------------------------------------------------------------------------------------

def _frame(people, w=512, h=768):
    return [{"people": [{"pose_keypoints_2d": p} for p in people], "canvas_width": w, "canvas_height": h}]


def _person(xy, c=0.9):
    out = []
    for x, y in xy:
        out += [x, y, c]
    return out


def test_a_joint_slightly_past_the_frame_keeps_normalised_coordinates():
    """OpenPose writes 1.02 for a joint just off the frame: the person stays in normalised coordinates."""
    xy = [(0.5, 0.1 + 0.04 * k) for k in range(18)]
    xy[10] = (0.55, 1.02)  # right ankle just below the frame
    pose = people_from_keypoints(_frame([_person(xy)]))[0]
    assert abs(pose.xy[10, 1] - 1.02) < 1e-9 and abs(pose.xy[0, 0] - 0.5) < 1e-9


def test_the_convention_is_decided_once_per_frame():
    """Two people in one frame share one convention: pixels when any coordinate is far above the limit."""
    small = [(0.4 + 0.01 * k, 0.5 + 0.01 * k) for k in range(18)]  # looks normalised on its own
    pixels = [(100 + 5 * k, 200 + 10 * k) for k in range(18)]
    a, b = people_from_keypoints(_frame([_person(small), _person(pixels)]))
    assert abs(b.xy[0, 0] - 100 / 512) < 1e-9
    assert abs(a.xy[0, 0] - 0.4 / 512) < 1e-9  # the same frame: pixels for both


def test_a_pose_entirely_off_the_canvas_is_refused_before_rendering():
    pose = people_from_keypoints(_frame([_person([(900 + k, 1000 + k) for k in range(18)])]))[0]
    with pytest.raises(PoseError, match="no joint of this pose lies on the canvas"):
        render_pose(pose, (64, 64))
    half = people_from_keypoints(_frame([_person([(100 + 30 * k, 300) for k in range(18)])]))[0]
    assert render_pose(half, (64, 64)).sum() > 0  # partly off the canvas: drawn, clipped as officially
