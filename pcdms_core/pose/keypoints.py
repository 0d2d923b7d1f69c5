"""Poses: 18 OpenPose joints, read from every form PCDMs users have, turned into what the stages consume.

Joint order (OpenPose / COCO-18): nose, neck, right shoulder, right elbow, right wrist, left shoulder,
left elbow, left wrist, right hip, right knee, right ankle, left hip, left knee, left ankle, right eye,
left eye, right ear, left ear.

A ``Pose`` holds one person's joints as *normalised* coordinates (x / width, y / height of the canvas the
keypoints were found on), a visibility flag per joint, that canvas size, and optional hand keypoints.

Readers:

* ``POSE_KEYPOINT`` values (comfyui_controlnet_aux's DWPose / OpenPose nodes): a list of frames, each
  ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_width": W, "canvas_height": H}``, with
  coordinates in pixels (DWPose) or normalised (OpenPose); both are detected.
* OpenPose JSON files (``{"people": [...]}``; 18-joint COCO or 25-joint BODY_25 layouts; 17-joint COCO
  lists are accepted too, the neck being the shoulders' midpoint). OpenPose itself writes pixels without a
  canvas size, so pass ``canvas=(W, H)`` for those.
* DeepFashion keypoint text files: the official ``normalized_pose_txt`` (18 lines ``x y``) and the
  GFLA / PATN annotation lines ``name: [y0, ...]: [x0, ...]`` (pixels of the 176 x 256 images, -1 = missing).

Outputs: ``pose_vector`` (the prior's 36 numbers) and ``render_pose`` (the ControlNet / DWPose-style
skeleton image stage 2 reads). ``align_pose`` moves a target pose onto the source body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import PoseError

JOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_JOINTS = 18
# BODY_25 -> COCO-18 (drops mid-hip and the feet)
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# COCO-17 (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles; left first) -> COCO-18 (no neck)
_COCO17_TO_COCO18 = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
DEEPFASHION_CANVAS = (176, 256)
MISSING_VALUE = -1.0  # how a missing joint is written in the prior's pose vector (docs/faithfulness.md)
MIN_JOINTS = 4


@dataclass
class Pose:
    """One person. ``xy`` is ``[18, 2]`` normalised (x / W, y / H); ``visible`` is ``[18]`` bool."""

    xy: np.ndarray
    visible: np.ndarray
    canvas: tuple[int, int] = (512, 512)  # (W, H) of the image the keypoints belong to
    hands: list[np.ndarray] = field(default_factory=list)  # each [21, 2] normalised; (0, 0) marks a missing point

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(NUM_JOINTS, 2)
        self.visible = np.asarray(self.visible, dtype=bool).reshape(NUM_JOINTS)
        self.canvas = (int(self.canvas[0]), int(self.canvas[1]))

    @property
    def num_visible(self) -> int:
        return int(self.visible.sum())

    def pixels(self) -> np.ndarray:
        """``[18, 2]`` pixel coordinates on the pose's canvas (NaN where missing)."""
        out = self.xy * np.array(self.canvas, dtype=np.float64)
        out[~self.visible] = np.nan
        return out

    def missing_names(self) -> list[str]:
        return [JOINT_NAMES[i] for i in range(NUM_JOINTS) if not self.visible[i]]

    def to_pose_keypoint(self) -> dict:
        """This pose as one ``POSE_KEYPOINT`` frame (pixel coordinates, confidence 1 / 0)."""
        kps: list[float] = []
        for (x, y), v in zip(self.pixels(), self.visible):
            kps += [float(x), float(y), 1.0] if v else [0.0, 0.0, 0.0]
        person: dict[str, Any] = {"pose_keypoints_2d": kps}
        for name, hand in zip(("hand_left_keypoints_2d", "hand_right_keypoints_2d"), self.hands):
            pts: list[float] = []
            for x, y in hand:
                ok = x > 0 and y > 0
                pts += [float(x * self.canvas[0]), float(y * self.canvas[1]), 1.0] if ok else [0.0, 0.0, 0.0]
            person[name] = pts
        return {"people": [person], "canvas_width": self.canvas[0], "canvas_height": self.canvas[1]}


# --- reading -------------------------------------------------------------------------------------------------------

def _triplets(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size % 3:
        raise PoseError(f"{what} must hold (x, y, confidence) triplets; got {arr.size} numbers")
    return arr.reshape(-1, 3)


def _to_coco18(kps: np.ndarray) -> np.ndarray:
    """Joint triplets of an 18-, 25- (BODY_25) or 17-joint (COCO) layout to the 18-joint order."""
    n = kps.shape[0]
    if n == NUM_JOINTS:
        return kps
    if n == 25:
        return kps[list(_BODY25_TO_COCO18)]
    if n == 17:
        out = np.zeros((NUM_JOINTS, 3))
        for dst, src in enumerate(_COCO17_TO_COCO18):
            if src is not None:
                out[dst] = kps[src]
        rs, ls = kps[6], kps[5]
        if rs[2] > 0 and ls[2] > 0:
            out[1] = [(rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2, min(rs[2], ls[2])]
        return out
    raise PoseError(
        f"a person has {n} body keypoints; expected 18 (OpenPose COCO), 25 (OpenPose BODY_25) or 17 (COCO)"
    )


# Coordinates count as normalised (fractions of the canvas) when every visible coordinate of the frame is at most
# this in size: joints just off the frame are written slightly outside [0, 1] (OpenPose writes 1.02), while
# pixel coordinates of a person are many pixels apart.
NORMALIZED_LIMIT = 1.5


def _looks_normalized(points: np.ndarray) -> bool:
    return bool(points.size) and float(np.abs(points).max()) <= NORMALIZED_LIMIT


def _person_from_triplets(
    kps: np.ndarray,
    canvas: Optional[tuple[int, int]],
    normalized: Optional[bool],
    threshold: float,
    hands: Sequence[Optional[Sequence[float]]] = (),
) -> Pose:
    kps = _to_coco18(kps)
    visible = (kps[:, 2] > threshold) & np.isfinite(kps[:, :2]).all(axis=1)
    pts = kps[visible, :2]
    is_norm = _looks_normalized(pts) if normalized is None else normalized
    if canvas is None:
        if not is_norm:
            raise PoseError(
                "these keypoints are in pixels but no canvas size is known; pass canvas=(width, height) "
                "(the size of the image the pose was detected on)"
            )
        canvas = (512, 512)
    scale = np.array([1.0, 1.0]) if is_norm else np.array(canvas, dtype=np.float64)
    xy = np.zeros((NUM_JOINTS, 2))
    xy[visible] = kps[visible, :2] / scale
    hand_arrays = []
    for hand in hands:
        if not hand:
            continue
        h = _triplets(hand, "hand keypoints")
        ok = (h[:, 2] > threshold) & (h[:, 0] > 0) & (h[:, 1] > 0)
        arr = np.zeros((h.shape[0], 2))
        arr[ok] = h[ok, :2] / scale
        hand_arrays.append(arr)
    return Pose(xy=xy, visible=visible, canvas=canvas, hands=hand_arrays)


def _frames(data: Any) -> list[dict]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, (list, tuple)) and all(isinstance(f, dict) for f in data):
        return list(data)
    raise PoseError(
        "a pose must be a POSE_KEYPOINT value (a list of frames) or an OpenPose dict with a 'people' list"
    )


def people_from_keypoints(
    data: Any,
    *,
    frame: int = 0,
    canvas: Optional[tuple[int, int]] = None,
    normalized: Optional[bool] = None,
    threshold: float = 0.0,
) -> list[Pose]:
    """Every person of one frame of a ``POSE_KEYPOINT`` value or OpenPose dict (see the module docstring).

    ``canvas`` overrides the frame's ``canvas_width``/``canvas_height``; ``normalized`` forces the coordinate
    convention (by default, decided once for the whole frame: normalised when every visible coordinate of every
    person is at most ``NORMALIZED_LIMIT`` in size, else pixels). A joint is visible when its confidence is
    above ``threshold``.
    """
    frames = _frames(data)
    if not frames:
        raise PoseError("the pose holds no frames")
    if not -len(frames) <= frame < len(frames):
        raise PoseError(f"frame {frame} was asked for, but the pose has {len(frames)} frame(s)")
    f = frames[frame]
    if canvas is None and "canvas_width" in f and "canvas_height" in f:
        canvas = (int(f["canvas_width"]), int(f["canvas_height"]))
    people = f.get("people")
    if people is None:
        if "animals" in f:
            raise PoseError("this is an animal pose (AnimalPose); PCDMs needs a human OpenPose/DWPose pose")
        raise PoseError("the pose frame has no 'people' list")
    bodies = [(person, _triplets(person["pose_keypoints_2d"], "pose_keypoints_2d"))
              for person in people if person.get("pose_keypoints_2d")]
    if normalized is None and bodies:  # one convention for the whole frame
        points = [kps[(kps[:, 2] > threshold) & np.isfinite(kps[:, :2]).all(axis=1), :2]
                  for kps in (_to_coco18(k) for _, k in bodies)]
        normalized = _looks_normalized(np.concatenate(points))
    out = []
    for person, kps in bodies:
        hands = (person.get("hand_left_keypoints_2d"), person.get("hand_right_keypoints_2d"))
        out.append(_person_from_triplets(kps, canvas, normalized, threshold, hands))
    return out


def _bbox_area(p: Pose) -> float:
    if p.num_visible < 2:
        return 0.0
    px = p.xy[p.visible] * np.array(p.canvas)
    span = px.max(axis=0) - px.min(axis=0)
    return float(span[0] * span[1])


def choose_person(people: Sequence[Pose], person: Union[int, str] = "largest", *, min_joints: int = MIN_JOINTS) -> Pose:
    """Pick one person. ``person`` is an index (0 = first in the file), or ``"largest"`` (default: the largest
    bounding box of visible joints, ties to the one with more joints), or ``"most_joints"``.

    Raises ``PoseError`` when there is nobody, the index is out of range, or the person has fewer than
    ``min_joints`` visible joints.
    """
    people = list(people)
    if not people:
        raise PoseError("the pose has nobody in it: no person was detected (try another image or a lower threshold)")
    if isinstance(person, str):
        if person == "largest":
            chosen = max(people, key=lambda p: (_bbox_area(p), p.num_visible))
        elif person == "most_joints":
            chosen = max(people, key=lambda p: (p.num_visible, _bbox_area(p)))
        else:
            raise PoseError(f"unknown person rule {person!r}; use an index, 'largest' or 'most_joints'")
    else:
        idx = int(person)
        if not -len(people) <= idx < len(people):
            raise PoseError(f"person {idx} was asked for, but the pose has {len(people)} person(s) (indices from 0)")
        chosen = people[idx]
    if chosen.num_visible < min_joints:
        raise PoseError(
            f"the chosen person has only {chosen.num_visible} of 18 joints visible (at least {min_joints} are "
            f"needed); missing: {', '.join(chosen.missing_names())}"
        )
    return chosen


def poses_from_keypoints(
    data: Any,
    *,
    person: Union[int, str] = "largest",
    canvas: Optional[tuple[int, int]] = None,
    normalized: Optional[bool] = None,
    min_joints: int = MIN_JOINTS,
) -> list[Pose]:
    """One chosen person per frame of a ``POSE_KEYPOINT`` value (see ``choose_person``)."""
    frames = _frames(data)
    if not frames:
        raise PoseError("the pose holds no frames")
    out = []
    for i in range(len(frames)):
        try:
            people = people_from_keypoints(frames, frame=i, canvas=canvas, normalized=normalized)
            out.append(choose_person(people, person, min_joints=min_joints))
        except PoseError as exc:
            raise PoseError(f"frame {i}: {exc}" if len(frames) > 1 else str(exc)) from None
    return out


def poses_to_keypoints(poses: Sequence[Pose]) -> list[dict]:
    """Poses as a ``POSE_KEYPOINT`` value: one frame per pose, pixel coordinates on each pose's canvas."""
    return [p.to_pose_keypoint() for p in poses]


def _parse_deepfashion_text(text: str, canvas: Optional[tuple[int, int]], source: str) -> Pose:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # GFLA / PATN annotation: "name: [y...]: [x...]" (a header line "name:keypoints_y:keypoints_x" may precede)
    anno = [ln for ln in lines if re.match(r"^[^:]*:\s*\[.*\]\s*:\s*\[.*\]\s*$", ln)]
    if anno:
        _, ys, xs = anno[0].rsplit(":", 2)
        y = np.array(json.loads(ys), dtype=np.float64)
        x = np.array(json.loads(xs), dtype=np.float64)
        if x.size != NUM_JOINTS or y.size != NUM_JOINTS:
            raise PoseError(f"{source}: an annotation line must list 18 y and 18 x values")
        w, h = canvas or DEEPFASHION_CANVAS
        visible = (x >= 0) & (y >= 0)
        xy = np.stack([x / w, y / h], axis=1)
        xy[~visible] = 0
        return Pose(xy=xy, visible=visible, canvas=(w, h))
    rows = []
    for ln in lines:
        parts = ln.replace(",", " ").split()
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            raise PoseError(f"{source}: cannot read the line {ln!r} as 'x y' numbers") from None
    if len(rows) != NUM_JOINTS or any(len(r) != 2 for r in rows):
        raise PoseError(
            f"{source}: a normalized_pose_txt file has 18 lines of 'x y' (found {len(rows)} lines); "
            "a GFLA annotation line looks like 'name: [y0, ...]: [x0, ...]'"
        )
    xy = np.array(rows, dtype=np.float64)
    visible = (xy >= 0).all(axis=1)
    xy[~visible] = 0
    return Pose(xy=xy, visible=visible, canvas=canvas or DEEPFASHION_CANVAS)


def load_pose(
    source: Union[str, Path, dict, list],
    *,
    person: Union[int, str] = "largest",
    frame: int = 0,
    canvas: Optional[tuple[int, int]] = None,
    normalized: Optional[bool] = None,
    min_joints: int = MIN_JOINTS,
) -> Pose:
    """One person from a file (``.json`` POSE_KEYPOINT / OpenPose, ``.txt`` / ``.csv`` DeepFashion) or an
    already-parsed ``POSE_KEYPOINT`` value."""
    if isinstance(source, (dict, list, tuple)):
        people = people_from_keypoints(source, frame=frame, canvas=canvas, normalized=normalized)
        return choose_person(people, person, min_joints=min_joints)
    path = Path(source)
    if not path.exists():
        raise PoseError(f"pose file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PoseError(f"{path.name} is not valid JSON ({exc})") from None
        people = people_from_keypoints(data, frame=frame, canvas=canvas, normalized=normalized)
        return choose_person(people, person, min_joints=min_joints)
    pose = _parse_deepfashion_text(text, canvas, path.name)
    return choose_person([pose], 0, min_joints=min_joints)


# --- what the stages consume ----------------------------------------------------------------------------------------

def pose_vector(poses: Union[Pose, Sequence[Pose]], missing_value: float = MISSING_VALUE) -> torch.Tensor:
    """The prior's pose input ``[B, 36]``: x0, y0, x1, y1, ... normalised; a missing joint is ``missing_value``."""
    if isinstance(poses, Pose):
        poses = [poses]
    rows = []
    for p in poses:
        xy = p.xy.copy()
        xy[~p.visible] = missing_value
        rows.append(xy.reshape(-1))
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def render_pose(
    poses: Union[Pose, Sequence[Pose]],
    size: Optional[tuple[int, int]] = None,
    *,
    hands: bool = True,
    stick_width: int = 4,
    joint_radius: int = 4,
) -> torch.Tensor:
    """The skeleton image stage 2 reads, uint8 ``[3, H, W]``: DWPose / ControlNet style on black (limbs as
    ellipses dimmed to 60 %, joint discs, hands as thin lines; no face).

    All poses are drawn on one canvas of ``size`` = (W, H), by default the first pose's canvas. Line widths
    are in pixels of that canvas: the official demo drew its target poses at 1024 px and let the pipeline
    shrink them to 512, so draw at the pose's own (detection) size and let the stage resize.
    """
    from .render import draw_skeleton

    if isinstance(poses, Pose):
        poses = [poses]
    if not poses:
        raise PoseError("nothing to render: no pose given")
    w, h = size or poses[0].canvas
    on_canvas = sum(int(((p.xy >= 0) & (p.xy <= 1)).all(axis=1)[p.visible].sum()) for p in poses)
    if on_canvas == 0 and any(p.num_visible for p in poses):
        raise PoseError(
            "no joint of this pose lies on the canvas (every visible joint is outside the image), so its skeleton "
            "would be empty: check the pose's canvas size (canvas_width / canvas_height) and its coordinates"
        )
    bodies = [(p.xy, p.visible) for p in poses]
    hand_list = [hand for p in poses for hand in p.hands] if hands else None
    img = draw_skeleton(int(w), int(h), bodies, hand_list, stick_width=stick_width, joint_radius=joint_radius)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


# --- alignment -----------------------------------------------------------------------------------------------------

_TORSO = (1, 2, 5, 8, 11)  # neck, shoulders, hips


def _anchor_and_height(p: Pose) -> tuple[np.ndarray, float]:
    """Centre (mean of the visible torso joints, else all joints) and body height in pixels of the canvas."""
    px = p.xy * np.array(p.canvas, dtype=np.float64)
    torso = [i for i in _TORSO if p.visible[i]]
    idx = torso if len(torso) >= 2 else list(np.flatnonzero(p.visible))
    centre = px[idx].mean(axis=0)
    heights = []
    # neck to ankle along each leg (hip, knee, ankle) where visible
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        if all(p.visible[[1, hip, knee, ankle]]):
            heights.append(sum(np.linalg.norm(px[a] - px[b]) for a, b in ((1, hip), (hip, knee), (knee, ankle))))
    if heights:
        return centre, max(heights)
    vis = px[p.visible]
    return centre, float(vis[:, 1].max() - vis[:, 1].min())


def align_pose(target: Pose, source: Pose, *, scale: bool = True, center: bool = True) -> Pose:
    """Move ``target`` so its body has the source's size and centre, on the source's canvas.

    The size is the neck-to-ankle length along the legs (or the vertical extent when legs are missing);
    the centre is the mean of the visible neck, shoulders and hips. Only the target's joints move; which
    joints are visible does not change.
    """
    t_centre, t_height = _anchor_and_height(target)
    s_centre, s_height = _anchor_and_height(source)
    factor = s_height / t_height if (scale and t_height > 1e-6 and s_height > 1e-6) else 1.0
    t_px = target.xy * np.array(target.canvas, dtype=np.float64)
    new_centre = s_centre if center else t_centre * np.array(source.canvas) / np.array(target.canvas)
    moved = (t_px - t_centre) * factor + new_centre
    xy = moved / np.array(source.canvas, dtype=np.float64)
    xy[~target.visible] = 0
    hands = []
    for hand in target.hands:
        ok = (hand > 0).all(axis=1)
        hp = hand * np.array(target.canvas)
        hn = ((hp - t_centre) * factor + new_centre) / np.array(source.canvas)
        hn[~ok] = 0
        hands.append(hn)
    return replace(target, xy=xy, canvas=source.canvas, hands=hands)
