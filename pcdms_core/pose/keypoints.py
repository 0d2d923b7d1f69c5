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

What is accepted, what is refused (one ``PoseError`` naming the file, frame, person and field) and why:
docs/poses.md.

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

from ..errors import PoseError, pcdms_warn

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
#
# Pose files and POSE_KEYPOINT values (docs/poses.md lists the rules with examples): a value that cannot be used
# gives one PoseError naming the file, the frame (when there are several), the person, the field and the fix.
# Accepted as meant: a dict (one frame) or a list of frames; a flat keypoint list or a list of [x, y, c] triplets;
# null or NaN in a keypoint (that joint is missing); a confidence above 1 (a detector's score: the joint is there)
# or at most the threshold (missing); a person whose pose_keypoints_2d is null or empty (kept, with no joint, so
# the person indices stay those of the file); UTF-8 files with or without a byte-order mark, and UTF-16 ones.

MAX_CANVAS = 16384  # ComfyUI's largest image side: a canvas above it is not the size of an image
# A visible joint more than this many canvas sizes off the canvas is refused: no detection puts one there (the
# coordinates or the canvas are wrong), and such values overflow the prior's float32 vector and the drawing.
FAR_LIMIT = 100.0
_LAYOUTS = "18 (OpenPose COCO), 25 (OpenPose BODY_25) or 17 (COCO)"
_FRAME_SHAPE = ('{"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...]}], "canvas_width": W, '
                '"canvas_height": H}')
_KEYPOINTS_FIX = ("write the keypoints as numbers: a flat list x0, y0, c0, x1, y1, c1, ... or a list of [x, y, c] "
                  "triplets (c is the confidence: 1 for a joint that is there, 0 for a missing one)")
_SOURCES = ("give the pose's keypoints: a .json as DWPose's POSE_KEYPOINT or OpenPose's --write_json writes them, or "
            "a DeepFashion keypoint .txt")


def _place(*parts: Optional[str]) -> str:
    return ", ".join(p for p in parts if p)


def _at(place: str, message: str) -> str:
    return f"{place}: {message}" if place else message


def _kind(value: Any) -> str:
    """How a JSON value reads to the person who wrote it."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"{str(bool(value)).lower()} (a true/false value)"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, dict):
        return "an object {...}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"a list of {len(value)}"
    if isinstance(value, (int, np.integer)) and abs(int(value)) > 10**15:
        return f"a number of {len(str(abs(int(value))))} digits"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return repr(value.item() if isinstance(value, np.generic) else value)
    return f"a {type(value).__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _number(value: Any, place: str, fix: str = _KEYPOINTS_FIX) -> float:
    """A finite float, or NaN for null / NaN (a missing value). Text, true/false, lists, objects and infinite or
    too-large numbers are refused."""
    if value is None:
        return float("nan")
    if not _is_number(value):
        why = "write numbers without quotes" if isinstance(value, str) else fix
        raise PoseError(_at(place, f"{_kind(value)} is not a number; {why}"))
    try:
        out = float(value)
    except OverflowError:
        out = float("inf")
    if np.isinf(out):
        raise PoseError(_at(place, f"{_kind(value)} is infinite or too large to be a keypoint value; write the "
                                   "joint's position (in pixels or as a fraction of the image), or mark the joint "
                                   "missing"))
    return out


def _numbers(values: Any, place: str) -> list[float]:
    """A flat list of numbers (see ``_number``)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise PoseError(f"{place} is {_kind(values)}, not a list of numbers")
    return [_number(v, f"{place}[{i}]") for i, v in enumerate(values)]


def _triplets(values: Any, place: str) -> np.ndarray:
    """``[N, 3]`` from a flat ``x, y, c, ...`` list or a list of ``[x, y, c]`` triplets; a keypoint with null or NaN
    in it is missing: its row becomes 0, 0, 0."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise PoseError(f"{place} is {_kind(values)}, not a list; {_KEYPOINTS_FIX}")
    nested = bool(values) and all(isinstance(v, (list, tuple, np.ndarray)) for v in values)
    if nested:
        rows = []
        for i, t in enumerate(values):
            if len(t) != 3:
                raise PoseError(f"{place}[{i}] holds {len(t)} values, not 3; {_KEYPOINTS_FIX}")
            rows.append([_number(v, f"{place}[{i}][{j}]") for j, v in enumerate(t)])
        arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    else:
        names = ("x", "y", "confidence")
        flat = [_number(v, f"{place}[{i}] (keypoint {i // 3}'s {names[i % 3]})") for i, v in enumerate(values)]
        if len(flat) % 3:
            raise PoseError(f"{place} holds {len(flat)} numbers, not a multiple of 3{_pairs_hint(len(flat))}; "
                            f"{_KEYPOINTS_FIX}")
        arr = np.array(flat, dtype=np.float64).reshape(-1, 3)
    arr[~np.isfinite(arr).all(axis=1)] = 0.0
    return arr


def _to_coco18(kps: np.ndarray, place: str = "pose_keypoints_2d") -> np.ndarray:
    """Joint triplets of an 18-, 25- (BODY_25) or 17-joint (COCO) layout to the 18-joint order (rows of a missing
    joint are zeros)."""
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
    raise PoseError(f"{place} holds {n} keypoints; expected {_LAYOUTS}{_pairs_hint(n * 3)}")


def _pairs_hint(count: int) -> str:
    """When ``count`` numbers are x, y pairs of a known layout (18, 25 or 17 joints) without confidences: say so."""
    joints = {36: 18, 50: 25, 34: 17}.get(count)
    if joints is None:
        return ""
    return (f" ({count} numbers look like x, y pairs for {joints} joints: add a confidence after each pair, 1 for a "
            "joint that is there and 0 for a missing one)")


# Coordinates count as normalised (fractions of the canvas) when every visible coordinate of the frame is at most
# this in size: joints just off the frame are written slightly outside [0, 1] (OpenPose writes 1.02), while
# pixel coordinates of a person are many pixels apart.
NORMALIZED_LIMIT = 1.5


def _looks_normalized(points: np.ndarray) -> bool:
    return bool(points.size) and float(np.abs(points).max()) <= NORMALIZED_LIMIT


def _check_near(xy: np.ndarray, ok: np.ndarray, canvas: tuple[int, int], place: str, names: Sequence[str]) -> None:
    far = ok & ((xy < -FAR_LIMIT) | (xy > 1 + FAR_LIMIT)).any(axis=1)
    if far.any():
        i = int(np.flatnonzero(far)[0])
        x, y = xy[i] * np.array(canvas)
        raise PoseError(_at(place, (
            f"the {names[i]} is at ({x:.6g}, {y:.6g}), more than {FAR_LIMIT:g} times the canvas size "
            f"({canvas[0]} x {canvas[1]}) off the canvas; the coordinates or the canvas size (canvas_width / "
            "canvas_height) are wrong"
        )))


def _person_from_triplets(
    kps: np.ndarray,
    canvas: Optional[tuple[int, int]],
    normalized: Optional[bool],
    threshold: float,
    hands: Sequence[tuple[str, Any]] = (),
    place: str = "",
) -> Pose:
    visible = kps[:, 2] > threshold
    pts = kps[visible, :2]
    is_norm = _looks_normalized(pts) if normalized is None else normalized
    if canvas is None:
        if not is_norm:
            raise PoseError(_at(place, (
                "these keypoints are in pixels but no canvas size is known; give the size of the image the pose was "
                "detected on (canvas_width and canvas_height in the file, canvas=(width, height) in Python, the "
                "node's canvas_width / canvas_height)"
            )))
        canvas = (512, 512)
    scale = np.array([1.0, 1.0]) if is_norm else np.array(canvas, dtype=np.float64)
    xy = np.zeros((NUM_JOINTS, 2))
    xy[visible] = kps[visible, :2] / scale
    _check_near(xy, visible, canvas, place, JOINT_NAMES)
    hand_arrays = []
    for name, hand in hands:
        if hand is None or (isinstance(hand, (list, tuple, np.ndarray)) and len(hand) == 0):
            continue
        hand_place = _place(place, name)
        h = _triplets(hand, hand_place)
        ok = (h[:, 2] > threshold) & (h[:, 0] > 0) & (h[:, 1] > 0)
        arr = np.zeros((h.shape[0], 2))
        arr[ok] = h[ok, :2] / scale
        _check_near(arr, ok, canvas, hand_place, [f"point {k}" for k in range(h.shape[0])])
        hand_arrays.append(arr)
    return Pose(xy=xy, visible=visible, canvas=canvas, hands=hand_arrays)


def _frames(data: Any, source: Optional[str] = None) -> list[dict]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, (list, tuple)):
        for i, f in enumerate(data):
            if not isinstance(f, dict):
                nested = ""
                if isinstance(f, (list, tuple)):
                    nested = " (a list inside the list of frames: give one list of frames)"
                raise PoseError(f"{_place(source, f'frame {i}')} is {_kind(f)}, not a frame{nested}; a frame is "
                                f"{_FRAME_SHAPE}")
        if not data:
            raise PoseError(_at(source or "", "the pose holds no frames (an empty list); " + _SOURCES))
        return list(data)
    raise PoseError(_at(source or "", (
        f"the pose is {_kind(data)}; a pose is a POSE_KEYPOINT value (a list of frames) or one frame, {_FRAME_SHAPE}"
    )))


def _canvas_side(value: Any, place: str, name: str) -> int:
    usable = _is_number(value)
    if usable:
        try:
            v = float(value)
        except OverflowError:
            v = float("inf")
        usable = np.isfinite(v) and v == int(v) and 1 <= v <= MAX_CANVAS
    if not usable:
        raise PoseError(_at(place, (
            f"{name} is {_kind(value)}; it must be the {'width' if 'width' in name else 'height'} in pixels of the "
            f"image the pose was detected on, a whole number from 1 to {MAX_CANVAS}"
        )))
    return int(v)


def _check_canvas(canvas: Any) -> tuple[int, int]:
    if not isinstance(canvas, (list, tuple)) or len(canvas) != 2:
        raise PoseError(f"canvas must be (width, height) in pixels; got {_kind(canvas)}")
    return _canvas_side(canvas[0], "", "the canvas width"), _canvas_side(canvas[1], "", "the canvas height")


def _frame_canvas(f: dict, place: str) -> Optional[tuple[int, int]]:
    w, h = f.get("canvas_width"), f.get("canvas_height")
    if w is None and h is None:
        return None
    if w is None or h is None:
        have, lack = ("canvas_width", "canvas_height") if h is None else ("canvas_height", "canvas_width")
        raise PoseError(f"{place or 'the pose'} has {have} but no {lack}; give both (the size of the image the pose "
                        "was detected on) or neither")
    return _canvas_side(w, place, "canvas_width"), _canvas_side(h, place, "canvas_height")


def _keys(d: dict) -> str:
    names = [str(k) for k in d]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def people_from_keypoints(
    data: Any,
    *,
    frame: int = 0,
    canvas: Optional[tuple[int, int]] = None,
    normalized: Optional[bool] = None,
    threshold: float = 0.0,
    source: Optional[str] = None,
) -> list[Pose]:
    """Every person of one frame of a ``POSE_KEYPOINT`` value or OpenPose dict (see the module docstring).

    ``canvas`` overrides the frame's ``canvas_width``/``canvas_height``; ``normalized`` forces the coordinate
    convention (by default, decided once for the whole frame: normalised when every visible coordinate of every
    person is at most ``NORMALIZED_LIMIT`` in size, else pixels). A joint is visible when its confidence is
    above ``threshold`` (0 or more) and no value of it is null or NaN. A person whose ``pose_keypoints_2d`` is
    null or empty is kept with no joint visible, so indices are those of the file. ``source`` (a file name) starts
    each error message. Anything unusable raises one ``PoseError`` naming where it is and the fix.
    """
    frames = _frames(data, source)
    if isinstance(frame, (bool, np.bool_)) or not isinstance(frame, (int, np.integer)):
        raise PoseError(f"frame must be a whole number (0 for the first frame); got {_kind(frame)}")
    if not -len(frames) <= frame < len(frames):
        raise PoseError(_at(source or "", f"frame {frame} was asked for, but the pose has {len(frames)} frame(s)"))
    if not _is_number(threshold) or not 0 <= float(threshold) < float("inf"):
        raise PoseError(f"threshold must be a confidence of 0 or more (0: every joint with a positive confidence); "
                        f"got {_kind(threshold)}")
    f = frames[frame]
    place = _place(source, f"frame {frame % len(frames)}" if len(frames) > 1 else None)
    canvas = _check_canvas(canvas) if canvas is not None else _frame_canvas(f, place)
    people = f.get("people")
    if people is None:
        if "animals" in f:
            raise PoseError(_at(place, "this is an animal pose (AnimalPose); PCDMs needs a human OpenPose/DWPose pose"))
        what = "'people' is null" if "people" in f else f"there is no 'people' list (its keys: {_keys(f)})"
        raise PoseError(_at(place, f"{what}; a pose frame is {_FRAME_SHAPE}"))
    if isinstance(people, np.ndarray):
        people = people.tolist()
    if not isinstance(people, (list, tuple)):
        one = " (for one person, put the object in a list: \"people\": [{...}])" if isinstance(people, dict) else ""
        raise PoseError(_at(place, f"'people' is {_kind(people)}, not a list of people{one}; a pose frame is "
                                   f"{_FRAME_SHAPE}"))
    bodies = []  # (person dict or None for nobody, kps, place)
    for j, person in enumerate(people):
        p_place = _place(place, f"person {j}")
        if not isinstance(person, dict):
            raise PoseError(f"{p_place} is {_kind(person)}, not a person; a person is an object "
                            '{"pose_keypoints_2d": [x0, y0, c0, ...]}')
        if "pose_keypoints_2d" not in person:
            raise PoseError(f"{p_place} has no 'pose_keypoints_2d' (its keys: {_keys(person)}); PCDMs reads OpenPose / "
                            'DWPose keypoints, a person being {"pose_keypoints_2d": [x0, y0, c0, ...]}')
        raw = person["pose_keypoints_2d"]
        if raw is None or (isinstance(raw, (list, tuple, np.ndarray)) and len(raw) == 0):
            bodies.append((None, np.zeros((NUM_JOINTS, 3)), p_place))
            continue
        kp_place = _place(p_place, "pose_keypoints_2d")
        bodies.append((person, _to_coco18(_triplets(raw, kp_place), kp_place), p_place))
    if normalized is None:  # one convention for the whole frame
        points = np.concatenate([np.zeros((0, 2))] + [kps[kps[:, 2] > threshold, :2] for _, kps, _ in bodies])
        normalized = _looks_normalized(points) if points.size else True  # no joint: nothing to scale
    out = []
    for person, kps, p_place in bodies:
        if person is None:
            out.append(Pose(xy=np.zeros((NUM_JOINTS, 2)), visible=np.zeros(NUM_JOINTS, dtype=bool),
                            canvas=canvas or (512, 512)))
            continue
        hands = [(name, person.get(name)) for name in ("hand_left_keypoints_2d", "hand_right_keypoints_2d")]
        out.append(_person_from_triplets(kps, canvas, normalized, threshold, hands, p_place))
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
    out = []
    for i in range(len(frames)):
        people = people_from_keypoints(frames, frame=i, canvas=canvas, normalized=normalized)
        try:
            out.append(choose_person(people, person, min_joints=min_joints))
        except PoseError as exc:
            raise PoseError(f"frame {i}: {exc}" if len(frames) > 1 else str(exc)) from None
    return out


def poses_to_keypoints(poses: Sequence[Pose]) -> list[dict]:
    """Poses as a ``POSE_KEYPOINT`` value: one frame per pose, pixel coordinates on each pose's canvas."""
    return [p.to_pose_keypoint() for p in poses]


def _finite_or_missing(values: Sequence[float], place: str) -> np.ndarray:
    fix = "write numbers (-1 for a missing joint)"
    return np.array([_number(v, f"{place}[{i}]", fix) for i, v in enumerate(values)], dtype=np.float64)


def _parse_deepfashion_text(text: str, canvas: Optional[tuple[int, int]], source: str) -> Pose:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # GFLA / PATN annotation: "name: [y...]: [x...]" (a header line "name:keypoints_y:keypoints_x" may precede)
    anno = [ln for ln in lines if re.match(r"^[^:]*:\s*\[.*\]\s*:\s*\[.*\]\s*$", ln)]
    if anno:
        _, ys, xs = anno[0].rsplit(":", 2)
        lists = []
        for which, part in (("y", ys), ("x", xs)):
            try:
                values = json.loads(part, parse_constant=lambda c: float(c))
            except ValueError:
                values = None
            if not isinstance(values, list):
                raise PoseError(f"{source}: the annotation line's {which} list {part.strip()[:60]!r} is not a list of "
                                "numbers; the line looks like 'name: [y0, ..., y17]: [x0, ..., x17]'")
            lists.append(_finite_or_missing(values, f"{source}, the annotation's {which} list"))
        y, x = lists
        if x.size != NUM_JOINTS or y.size != NUM_JOINTS:
            raise PoseError(f"{source}: an annotation line must list 18 y and 18 x values (it has {y.size} and "
                            f"{x.size}); -1 marks a missing joint")
        w, h = _check_canvas(canvas) if canvas is not None else DEEPFASHION_CANVAS
        visible = (x >= 0) & (y >= 0)  # NaN compares false: missing
        xy = np.stack([x / w, y / h], axis=1)
        xy[~visible] = 0
        _check_near(xy, visible, (w, h), source, JOINT_NAMES)
        return Pose(xy=xy, visible=visible, canvas=(w, h))
    rows = []
    for n, ln in enumerate(lines):
        parts = ln.replace(",", " ").split()
        try:
            row = [float(v) for v in parts]
        except ValueError:
            raise PoseError(f"{source}: cannot read the line {ln[:60]!r} as 'x y' numbers; a normalized_pose_txt file "
                            "has 18 lines 'x y' (-1 -1 for a missing joint)") from None
        if any(np.isinf(row)):
            raise PoseError(f"{source}: the line {ln[:60]!r} holds an infinite value; write the joint's x y, or -1 -1 "
                            "for a missing joint")
        rows.append(row)
    if len(rows) != NUM_JOINTS or any(len(r) != 2 for r in rows):
        raise PoseError(
            f"{source}: a normalized_pose_txt file has 18 lines of 'x y' (found {len(rows)} lines); "
            "a GFLA annotation line looks like 'name: [y0, ...]: [x0, ...]'"
        )
    xy = np.array(rows, dtype=np.float64)
    visible = (xy >= 0).all(axis=1)  # NaN compares false: missing
    xy[~visible] = 0
    canvas = _check_canvas(canvas) if canvas is not None else DEEPFASHION_CANVAS
    _check_near(xy, visible, canvas, source, JOINT_NAMES)
    return Pose(xy=xy, visible=visible, canvas=canvas)


_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _image_kind(raw: bytes) -> Optional[str]:
    for sig, name in _IMAGE_SIGNATURES:
        if raw.startswith(sig):
            return name
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WebP"
    if raw[:2] == b"BM" and b"\x00" in raw[:64]:
        return "BMP"
    return None


def _read_pose_text(path: Path) -> str:
    """The text of a pose file, or one PoseError saying what the file is instead."""
    if not path.exists():
        raise PoseError(f"pose file not found: {path}")
    if path.is_dir():
        raise PoseError(f"the pose file {path} is a folder; give a .json or .txt keypoint file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PoseError(f"the pose file {path} cannot be read ({exc.strerror or exc})") from None
    name = path.name
    image = _image_kind(raw)
    if image:
        raise PoseError(
            f"{name} is a {image} image, not keypoints; {_SOURCES} (a skeleton image is used as an image: the command "
            "line's --target-pose takes one under its image name, .png / .jpg)"
        )
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            text = "\x00"
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = "\x00"
    if "\x00" in text:
        raise PoseError(f"{name} is a binary file, not a keypoint file (text); {_SOURCES}; a text file must be saved "
                        "as UTF-8")
    if not text.strip():
        raise PoseError(f"{name} is empty; {_SOURCES}")
    return text


def _json_int(digits: str) -> Union[int, float]:
    """JSON whole numbers; one too long for Python's int conversion becomes inf (refused as too large by name)."""
    return int(digits) if len(digits) <= 400 else float(digits)


def load_pose(
    source: Union[str, Path, dict, list],
    *,
    person: Union[int, str] = "largest",
    frame: Optional[int] = None,
    canvas: Optional[tuple[int, int]] = None,
    normalized: Optional[bool] = None,
    min_joints: int = MIN_JOINTS,
) -> Pose:
    """One person from a file (``.json`` POSE_KEYPOINT / OpenPose, ``.txt`` / ``.csv`` DeepFashion) or an
    already-parsed ``POSE_KEYPOINT`` value.

    ``frame`` picks the frame of a value with several (a video's POSE_KEYPOINT); by default the first, with a
    ``PCDMsWarning`` when there are more. Every unusable file or value raises one ``PoseError`` (see
    ``people_from_keypoints`` and docs/poses.md)."""
    if source is None:
        raise PoseError(f"no pose given (None); {_SOURCES}, or a POSE_KEYPOINT value")
    if isinstance(source, (dict, list, tuple)):
        return _choose_from(source, None, person, frame, canvas, normalized, min_joints)
    if not isinstance(source, (str, Path)):
        raise PoseError(f"a pose is a file path or a POSE_KEYPOINT value (a list of frames); got {_kind(source)}")
    path = Path(source)
    text = _read_pose_text(path)
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text, parse_int=_json_int)
        except RecursionError:
            raise PoseError(f"{path.name} is nested too deeply to be a pose; {_SOURCES}") from None
        except ValueError as exc:
            raise PoseError(f"{path.name} is not valid JSON ({exc}); is the file complete?") from None
        return _choose_from(data, path.name, person, frame, canvas, normalized, min_joints)
    if frame not in (None, 0):
        raise PoseError(f"{path.name} is a DeepFashion keypoint file, which holds one pose; frame {frame} was asked "
                        "for")
    pose = _parse_deepfashion_text(text, canvas, path.name)
    return choose_person([pose], 0, min_joints=min_joints)


def _choose_from(data, source, person, frame, canvas, normalized, min_joints) -> Pose:
    frames = _frames(data, source)
    if frame is None:
        frame = 0
        if len(frames) > 1:
            pcdms_warn(
                f"{source or 'the pose'} holds {len(frames)} frames; the first (frame 0) is used (in Python, "
                "load_pose(..., frame=N) picks another)", stacklevel=3)
    people = people_from_keypoints(frames, frame=frame, canvas=canvas, normalized=normalized, source=source)
    try:
        return choose_person(people, person, min_joints=min_joints)
    except PoseError as exc:
        where = _place(source, f"frame {frame % len(frames)}" if len(frames) > 1 else None)
        raise PoseError(_at(where, str(exc))) from None


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
