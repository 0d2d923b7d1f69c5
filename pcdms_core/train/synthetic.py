"""A synthetic pose-transfer dataset: procedurally dressed people in random poses, with exact keypoints.

Each person is an OpenPose-18 skeleton with human proportions in a random plausible pose (standing,
walking, arms raised, one arm up, hands on hips, arms out), seen from the front, the back, three-quarter or
the side (hidden face joints follow the view; a wrist or an ankle is sometimes hidden). The body is drawn as
capsules and polygons and dressed procedurally: skin, hair (short or long), a top (short or long sleeves), a
bottom (trousers, shorts or skirt) and shoes, each garment solid or patterned (stripes, dots, checks), on a
plain, gradient, striped or noisy background. A pair is the same person, on the same background, in two
poses. Everything is deterministic from (seed, index) and fast on a CPU (about a millisecond a pair).

``SyntheticPairs(seed)[i]`` gives a ``Pair`` with both images (uint8 [3, H, W]), both poses, and the body
masks (bool [H, W]) used by the evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..pose.keypoints import NUM_JOINTS, Pose

POSE_KINDS = ("stand", "walk", "arms_up", "one_arm_up", "hands_on_hips", "arms_out")
VIEWS = ("front", "front", "front", "back", "three_quarter", "side")
SKIN = [(255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36)]
HAIR = [(20, 20, 20), (70, 45, 25), (120, 80, 40), (200, 160, 90), (150, 40, 20), (170, 170, 170)]
PATTERNS = ("solid", "solid", "h_stripes", "v_stripes", "dots", "checks")
BOTTOMS = ("trousers", "trousers", "shorts", "skirt")


@dataclass
class Appearance:
    skin: tuple
    hair: tuple
    long_hair: bool
    top: tuple
    top_accent: tuple
    top_pattern: str
    long_sleeves: bool
    bottom: tuple
    bottom_accent: tuple
    bottom_pattern: str
    bottom_kind: str
    shoes: tuple
    pattern_period: int


@dataclass
class Background:
    kind: str
    colors: tuple
    seed: int


@dataclass
class Pair:
    source: torch.Tensor  # uint8 [3, H, W]
    target: torch.Tensor
    source_pose: Pose
    target_pose: Pose
    source_mask: torch.Tensor  # bool [H, W]: the person's pixels
    target_mask: torch.Tensor
    meta: dict = field(default_factory=dict)


def _color(rng: np.random.Generator) -> tuple:
    # saturated, clearly distinct garment colours from a random hue
    h = rng.uniform(0, 1)
    s = rng.uniform(0.45, 1.0)
    v = rng.uniform(0.35, 0.95)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (int(r * 255), int(g * 255), int(b * 255))


def random_appearance(rng: np.random.Generator) -> Appearance:
    return Appearance(
        skin=SKIN[rng.integers(len(SKIN))],
        hair=HAIR[rng.integers(len(HAIR))],
        long_hair=bool(rng.random() < 0.4),
        top=_color(rng), top_accent=_color(rng), top_pattern=PATTERNS[rng.integers(len(PATTERNS))],
        long_sleeves=bool(rng.random() < 0.5),
        bottom=_color(rng), bottom_accent=_color(rng), bottom_pattern=PATTERNS[rng.integers(len(PATTERNS))],
        bottom_kind=BOTTOMS[rng.integers(len(BOTTOMS))],
        shoes=_color(rng) if rng.random() < 0.5 else (30, 30, 30),
        pattern_period=int(rng.integers(4, 9)),
    )


def random_background(rng: np.random.Generator) -> Background:
    kind = ("plain", "plain", "gradient", "gradient", "stripes", "noise")[rng.integers(6)]
    light = lambda: tuple(int(c * 0.5 + 110) for c in _color(rng))  # noqa: E731  (muted, so people stand out)
    return Background(kind=kind, colors=(light(), light()), seed=int(rng.integers(2**31)))


# --- skeleton ----------------------------------------------------------------------------------------------------

def _rot(angle_deg: float, length: float) -> np.ndarray:
    """A vector of ``length`` pointing down rotated by ``angle_deg`` (positive: towards image right)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a) * length, math.cos(a) * length])


def random_skeleton(rng: np.random.Generator, width: int, height: int, kind: str | None = None,
                    view: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pixel joints [18, 2], visibility [18], and the drawing parameters of one random person."""
    kind = kind or POSE_KINDS[rng.integers(len(POSE_KINDS))]
    view = view or VIEWS[rng.integers(len(VIEWS))]
    turn = {"front": 1.0, "back": 1.0, "three_quarter": 0.7, "side": 0.3}[view]
    body = rng.uniform(0.68, 0.86) * height  # head top to ankles
    cx = rng.uniform(0.42, 0.58) * width
    feet_y = rng.uniform(max(0.88, body / height + 0.03), 0.96) * height
    lean = rng.normal(0, 4)
    u = body / 7.6  # a "head" unit: ankles to the top of the head is about 7.6 of them here
    # left/right in the image: in a front view the person's right side is on the image's left
    flip = -1.0 if view == "back" else 1.0
    side_sign = rng.choice([-1.0, 1.0])  # which way a side / three-quarter view faces

    hip_c = np.array([cx, feet_y - 3.6 * u])
    neck = hip_c + _rot(180 + lean, 2.45 * u)
    half_sh = 0.95 * u * turn
    half_hip = 0.55 * u * turn
    axis = _rot(90 + lean, 1.0)  # unit vector across the shoulders, towards the image right
    r_sh, l_sh = neck - axis * half_sh * flip, neck + axis * half_sh * flip
    r_hip, l_hip = hip_c - axis * half_hip * flip, hip_c + axis * half_hip * flip

    # arms: angle of the upper arm from hanging down, outwards positive; elbow bend relative to it
    def arm_angles():
        if kind == "arms_up":
            return rng.uniform(140, 175), rng.uniform(-20, 10)
        if kind == "arms_out":
            return rng.uniform(75, 100), rng.uniform(-15, 15)
        if kind == "hands_on_hips":
            return rng.uniform(35, 50), rng.uniform(-110, -85)
        if kind == "walk":
            return rng.uniform(-25, 25), rng.uniform(-30, 0)
        return rng.uniform(5, 20), rng.uniform(-15, 5)

    ar, al = arm_angles(), arm_angles()
    if kind == "one_arm_up":
        ar, al = (rng.uniform(130, 170), rng.uniform(-25, 10)), (rng.uniform(5, 20), rng.uniform(-10, 5))
        if rng.random() < 0.5:
            ar, al = al, ar
    upper, fore = 1.5 * u, 1.35 * u

    def arm(shoulder, angles, out_sign):
        a1, bend = angles
        elbow = shoulder + _rot(a1 * out_sign, upper)
        wrist = elbow + _rot((a1 + bend) * out_sign, fore)
        return elbow, wrist

    r_el, r_wr = arm(r_sh, ar, -flip)
    l_el, l_wr = arm(l_sh, al, flip)

    # legs
    thigh, shin = 1.85 * u, 1.75 * u
    if kind == "walk":
        lr, ll = rng.uniform(-25, -10), rng.uniform(10, 25)
        kr, kl = rng.uniform(0, 25), rng.uniform(0, 10)
    else:
        spread = rng.uniform(0, 10)
        lr, ll = -spread, spread
        kr, kl = rng.uniform(-3, 5), rng.uniform(-3, 5)
    if view in ("side", "three_quarter"):  # a stride seen from the side: legs forward and back
        lr, ll = lr * 0.5, ll * 0.5
    r_kn = r_hip + _rot(lr * flip, thigh)
    r_an = r_kn + _rot((lr - kr) * flip, shin)
    l_kn = l_hip + _rot(ll * flip, thigh)
    l_an = l_kn + _rot((ll + kl) * flip, shin)

    # head: nose, eyes, ears
    head_c = neck + _rot(180 + lean + rng.normal(0, 5), 1.0 * u)
    face_shift = {"front": 0.0, "back": 0.0, "three_quarter": 0.35, "side": 0.6}[view] * u * side_sign
    across = axis * face_shift
    nose = head_c + across + np.array([0, 0.25 * u])
    eye_dx = 0.28 * u * turn
    r_eye = head_c + across - axis * eye_dx * flip
    l_eye = head_c + across + axis * eye_dx * flip
    ear_dx = 0.55 * u * max(turn, 0.5)
    r_ear = head_c - axis * ear_dx * flip + np.array([0, 0.05 * u])
    l_ear = head_c + axis * ear_dx * flip + np.array([0, 0.05 * u])

    joints = np.stack([nose, neck, r_sh, r_el, r_wr, l_sh, l_el, l_wr, r_hip, r_kn, r_an, l_hip, l_kn, l_an,
                       r_eye, l_eye, r_ear, l_ear])
    visible = np.ones(NUM_JOINTS, dtype=bool)
    if view == "back":
        visible[[0, 14, 15]] = False  # no face from behind
    elif view == "side":
        # the far eye and ear are hidden; "far" is the side the face does not point to
        far_right = (side_sign * flip) > 0
        visible[[14, 16] if far_right else [15, 17]] = False
    for joint in (4, 7, 10, 13):  # an occluded or cropped wrist / ankle now and then
        if rng.random() < 0.05:
            visible[joint] = False
    inside = (joints[:, 0] >= 0) & (joints[:, 0] < width) & (joints[:, 1] >= 0) & (joints[:, 1] < height)
    visible &= inside
    params = dict(kind=kind, view=view, unit=u, head=head_c, face_shift=face_shift, flip=flip)
    return joints, visible, params


# --- drawing -----------------------------------------------------------------------------------------------------

def _capsule(draw: ImageDraw.ImageDraw, a, b, width: float, fill) -> None:
    draw.line([tuple(a), tuple(b)], fill=fill, width=max(1, int(round(width))))
    r = width / 2
    for p in (a, b):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=fill)


def _pattern(kind: str, base, accent, period: int, size: tuple[int, int], offset: int) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "h_stripes":
        on = ((yy + offset) // max(2, period // 2)) % 2 == 0
    elif kind == "v_stripes":
        on = ((xx + offset) // max(2, period // 2)) % 2 == 0
    elif kind == "dots":
        on = (((xx + offset) % period) - period / 2) ** 2 + (((yy + offset) % period) - period / 2) ** 2 < (period / 3.5) ** 2
    elif kind == "checks":
        on = ((((xx + offset) // period) + ((yy + offset) // period)) % 2) == 0
    else:
        on = np.ones((h, w), dtype=bool)
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.array(accent, dtype=np.uint8)
    out[on] = np.array(base, dtype=np.uint8)
    return out


def _background(bg: Background, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    a = np.array(bg.colors[0], dtype=np.float32)
    b = np.array(bg.colors[1], dtype=np.float32)
    if bg.kind == "plain":
        img = np.broadcast_to(a, (h, w, 3)).copy()
    elif bg.kind == "gradient":
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        img = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).copy()
    elif bg.kind == "stripes":
        period = 6 + bg.seed % 10
        on = (np.arange(w) // period) % 2 == 0
        img = np.where(on[None, :, None], a, b) * np.ones((h, 1, 1), np.float32)
    else:
        rng = np.random.default_rng(bg.seed)
        coarse = rng.uniform(0, 1, size=(h // 8 + 2, w // 8 + 2)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                       dtype=np.float32)[:, :, None] / 255
        img = a * (1 - t) + b * t
    return img.clip(0, 255).astype(np.uint8)


def render_person(joints: np.ndarray, params: dict, look: Appearance, bg: Background,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The person drawn on the background: uint8 [H, W, 3] and the person's mask bool [H, W]."""
    w, h = size
    u = params["unit"]
    j = joints
    layers = {name: Image.new("L", size, 0) for name in ("skin", "hair", "top", "bottom", "shoes")}
    d = {name: ImageDraw.Draw(img) for name, img in layers.items()}
    limb = 0.55 * u
    # legs (skin first; trousers / shorts / skirt over them)
    for hip, knee, ankle in ((j[8], j[9], j[10]), (j[11], j[12], j[13])):
        _capsule(d["skin"], hip, knee, limb * 1.1, 255)
        _capsule(d["skin"], knee, ankle, limb * 0.9, 255)
        if look.bottom_kind == "trousers":
            _capsule(d["bottom"], hip, knee, limb * 1.25, 255)
            _capsule(d["bottom"], knee, ankle, limb * 1.05, 255)
        elif look.bottom_kind == "shorts":
            _capsule(d["bottom"], hip, hip + (knee - hip) * 0.55, limb * 1.3, 255)
        r = 0.32 * u
        _capsule(d["shoes"], ankle, ankle + np.array([0.25 * u * params["flip"], 0.15 * u]), r * 1.6, 255)
    hip_c = (j[8] + j[11]) / 2
    if look.bottom_kind == "skirt":
        knees = (j[9] + j[12]) / 2
        spread = abs(j[11][0] - j[8][0]) / 2 + 0.9 * u
        d["bottom"].polygon([tuple(j[8] + [-0.2 * u, -0.3 * u]), tuple(j[11] + [0.2 * u, -0.3 * u]),
                             (knees[0] + spread, knees[1]), (knees[0] - spread, knees[1])], fill=255)
    else:
        d["bottom"].polygon([tuple(j[8] + [-0.3 * u, -0.4 * u]), tuple(j[11] + [0.3 * u, -0.4 * u]),
                             tuple(j[11] + [0.3 * u, 0.35 * u]), tuple(j[8] + [-0.3 * u, 0.35 * u])], fill=255)
    # torso
    sh_pad = 0.25 * u
    torso = [tuple(j[2] + [-sh_pad * np.sign(j[5][0] - j[2][0] or 1), 0]),
             tuple(j[5] + [sh_pad * np.sign(j[5][0] - j[2][0] or 1), 0]),
             tuple(j[11] + [0.35 * u * np.sign(j[11][0] - j[8][0] or 1), -0.2 * u]),
             tuple(j[8] - [0.35 * u * np.sign(j[11][0] - j[8][0] or 1), 0.2 * u])]
    d["top"].polygon(torso, fill=255)
    _capsule(d["skin"], j[1], params["head"], 0.45 * u, 255)  # neck
    # arms
    for sh, el, wr in ((j[2], j[3], j[4]), (j[5], j[6], j[7])):
        _capsule(d["skin"], sh, el, limb * 0.95, 255)
        _capsule(d["skin"], el, wr, limb * 0.8, 255)
        _capsule(d["skin"], wr, wr + (wr - el) * 0.18, limb * 0.9, 255)  # hand
        _capsule(d["top"], sh, sh + (el - sh) * (1.0 if look.long_sleeves else 0.5), limb * 1.15, 255)
        if look.long_sleeves:
            _capsule(d["top"], el, el + (wr - el) * 0.9, limb * 1.0, 255)
    # head and hair
    hc = params["head"]
    hr = 0.52 * u
    d["skin"].ellipse([hc[0] - hr * 0.85, hc[1] - hr, hc[0] + hr * 0.85, hc[1] + hr], fill=255)
    if params["view"] == "back":
        d["hair"].ellipse([hc[0] - hr * 0.9, hc[1] - hr * 1.05, hc[0] + hr * 0.9, hc[1] + hr * 0.95], fill=255)
    else:
        d["hair"].chord([hc[0] - hr * 0.9, hc[1] - hr * 1.1, hc[0] + hr * 0.9, hc[1] + hr * 0.5], 180, 360, fill=255)
    if look.long_hair:
        d["hair"].rectangle([hc[0] - hr * 0.95, hc[1] - hr * 0.2, hc[0] + hr * 0.95, hc[1] + hr * 1.9], fill=255)

    img = _background(bg, size).astype(np.uint8)
    offset = int(bg.seed % 7)
    fills = {
        "skin": np.broadcast_to(np.array(look.skin, np.uint8), (h, w, 3)),
        "bottom": _pattern(look.bottom_pattern, look.bottom, look.bottom_accent, look.pattern_period, size, offset),
        "shoes": np.broadcast_to(np.array(look.shoes, np.uint8), (h, w, 3)),
        "top": _pattern(look.top_pattern, look.top, look.top_accent, look.pattern_period, size, offset + 3),
        "hair": np.broadcast_to(np.array(look.hair, np.uint8), (h, w, 3)),
    }
    person = np.zeros((h, w), dtype=bool)
    # layer order: skin (limbs, head) under clothes; hair over the head; the top over the bottom's waistband
    for name in ("skin", "bottom", "shoes", "top", "hair"):
        m = np.asarray(layers[name]) > 0
        img[m] = fills[name][m]
        person |= m
    # eyes on a visible face
    if params["view"] != "back":
        draw = Image.fromarray(img)
        dd = ImageDraw.Draw(draw)
        for e in (14, 15):
            if params.get("visible", np.ones(18, bool))[e]:
                x, y = joints[e]
                dd.ellipse([x - 0.07 * u, y - 0.07 * u, x + 0.07 * u, y + 0.07 * u], fill=(30, 30, 30))
        img = np.asarray(draw).copy()
    return img, person


class SyntheticPairs(torch.utils.data.Dataset):
    """Pairs of one procedurally dressed person in two poses, deterministic from (seed, index)."""

    def __init__(self, seed: int = 0, size: tuple[int, int] = (128, 128), length: int = 100_000):
        self.seed = seed
        self.size = (int(size[0]), int(size[1]))
        self.length = length

    def __len__(self) -> int:
        return self.length

    def person(self, rng, look: Appearance, bg: Background):
        w, h = self.size
        joints, visible, params = random_skeleton(rng, w, h)
        params["visible"] = visible
        img, mask = render_person(joints, params, look, bg, self.size)
        xy = joints / np.array([w, h], dtype=np.float64)
        xy[~visible] = 0
        pose = Pose(xy=xy, visible=visible, canvas=self.size)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), pose, torch.from_numpy(mask), params

    def __getitem__(self, index: int) -> Pair:
        rng = np.random.default_rng([self.seed, int(index)])
        look = random_appearance(rng)
        bg = random_background(rng)
        src, src_pose, src_mask, p1 = self.person(rng, look, bg)
        tgt, tgt_pose, tgt_mask, p2 = self.person(rng, look, bg)
        return Pair(src, tgt, src_pose, tgt_pose, src_mask, tgt_mask,
                    meta={"source_kind": p1["kind"], "source_view": p1["view"],
                          "target_kind": p2["kind"], "target_view": p2["view"]})
