"""OpenPose skeleton rendering without OpenCV, pixel-identical to the ControlNet / DWPose drawing.

The official pose images come from controlnet_aux's DWPose ``draw_bodypose`` / ``draw_handpose`` (the copy in
PCDMs' ``src/controlnet_aux/dwpose/util.py``: hand edges 1 px wide, hand points of radius 1), which draw with
``cv2.ellipse2Poly`` + ``cv2.fillConvexPoly`` (limbs), ``cv2.circle`` (joints) and ``cv2.line`` (hand edges).
This module re-implements exactly the integer algorithms those calls use, so the output matches OpenCV
(checked against opencv-python 4.10 pixel for pixel) while needing only numpy.

The routines below are ports of OpenCV's ``modules/imgproc/src/drawing.cpp`` (OpenCV, Apache-2.0):
``ellipse2Poly`` (double and int versions, with OpenCV's 1-degree float sine table), ``FillConvexPoly``
(outline with ``Line`` and the XY_SHIFT=16 fixed-point edge walk), ``Line`` / ``LineIterator`` with
8-connectivity and ``clipLine``, and the midpoint ``Circle`` with filled horizontal spans. Colour Scalars are
converted as OpenCV's ``saturate_cast<uchar>(double)`` does: round half to even, then clamp to [0, 255].

Coordinates are normalised: x / width and y / height, as in controlnet_aux.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["draw_skeleton", "BODY_COLORS", "LIMB_SEQ", "HAND_EDGES"]

# --- the controlnet_aux tables ----------------------------------------------------------------------------

#: Limbs as pairs of 0-based joint indices (OpenPose 18-joint order). Only the first 17 are drawn.
LIMB_SEQ: tuple[tuple[int, int], ...] = tuple(
    (a - 1, b - 1)
    for a, b in (
        (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
        (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
    )
)
_N_LIMBS_DRAWN = 17

#: RGB colour per limb / joint index.
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
_HAND_EPS = 0.01
_HAND_POINT_COLOR = (0, 0, 255)

# --- OpenCV constants -------------------------------------------------------------------------------------

_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT
_INT_MIN = -(2**31)

# OpenCV's SinTable holds sin(k degrees), k = 0..450, as 7-decimal float literals. It is exactly symmetric, so
# the quarter wave (k = 0..90, in units of 1e-7) determines it. Decimal -> double -> float32 gives the same
# float32 as the C compiler's direct rounding for every entry (checked exactly).
_SIN_QUARTER_E7 = (
    "0 174524 348995 523360 697565 871557 1045285 1218693 1391731 1564345 1736482 1908090 2079117 2249511 "
    "2419219 2588190 2756374 2923717 3090170 3255682 3420201 3583679 3746066 3907311 4067366 4226183 4383711 "
    "4539905 4694716 4848096 5000000 5150381 5299193 5446390 5591929 5735764 5877853 6018150 6156615 6293204 "
    "6427876 6560590 6691306 6819984 6946584 7071068 7193398 7313537 7431448 7547096 7660444 7771460 7880108 "
    "7986355 8090170 8191520 8290376 8386706 8480481 8571673 8660254 8746197 8829476 8910065 8987940 9063078 "
    "9135455 9205049 9271839 9335804 9396926 9455186 9510565 9563048 9612617 9659258 9702957 9743701 9781476 "
    "9816272 9848078 9876883 9902681 9925462 9945219 9961947 9975641 9986295 9993908 9998477 10000000"
)


def _build_sin_table() -> np.ndarray:
    quarter = np.array([int(s) for s in _SIN_QUARTER_E7.split()], dtype=np.float64) / 1e7
    assert quarter.shape == (91,)
    k = np.arange(451) % 360
    idx = np.where(k <= 90, k, np.where(k <= 180, 180 - k, np.where(k <= 270, k - 180, 360 - k)))
    sign = np.where(k <= 180, 1.0, -1.0)
    # float32 entries, used (promoted to double) exactly like the C code does
    return (sign * quarter[idx]).astype(np.float32).astype(np.float64)


_SIN_TABLE = _build_sin_table()


# --- small numeric helpers --------------------------------------------------------------------------------


def _cv_round(values: np.ndarray) -> np.ndarray:
    """cvRound on doubles (SSE2 cvtsd2si): round half to even; out-of-range / NaN gives INT_MIN."""
    r = np.rint(values)
    ok = np.isfinite(r) & (r >= _INT_MIN) & (r <= 2**31 - 1)
    out = np.full(r.shape, _INT_MIN, dtype=np.int64)
    out[ok] = r[ok].astype(np.int64)
    return out


def _scalar_to_u8(color: Iterable[float]) -> tuple[int, int, int]:
    """A colour Scalar to 8-bit channels as OpenCV's scalarToRawData does (saturate_cast<uchar>(double))."""
    vals = _cv_round(np.asarray(list(color), dtype=np.float64)[:3])
    return tuple(int(v) for v in np.clip(vals, 0, 255))  # type: ignore[return-value]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """matplotlib.colors.hsv_to_rgb for one float64 colour, with the same operation order (so same bits)."""
    i = int(h * 6.0)
    f = (h * 6.0) - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    if s == 0:
        return v, v, v
    return ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i % 6]


def _hand_edge_colors() -> tuple[tuple[int, int, int], ...]:
    n = len(HAND_EDGES)
    return tuple(_scalar_to_u8(np.array(_hsv_to_rgb(ie / float(n), 1.0, 1.0)) * 255) for ie in range(n))


_HAND_EDGE_COLORS = _hand_edge_colors()


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# --- ellipse2Poly -----------------------------------------------------------------------------------------


def _ellipse_poly(
    center: tuple[int, int], axes: tuple[int, int], angle: int, arc_start: int = 0, arc_end: int = 360,
    delta: int = 1,
) -> np.ndarray:
    """cv::ellipse2Poly, int version: int64 [N, 2] vertices (x, y)."""
    if not 0 < delta <= 180:
        raise ValueError("delta must be in (0, 180]")
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    if arc_start > arc_end:
        arc_start, arc_end = arc_end, arc_start
    while arc_start < 0:
        arc_start += 360
        arc_end += 360
    while arc_end > 360:
        arc_end -= 360
        arc_start -= 360
    if arc_end - arc_start > 360:
        arc_start, arc_end = 0, 360
    # sincos(): alpha = cos, beta = sin (float32 table values)
    a = angle + (360 if angle < 0 else 0)
    alpha = _SIN_TABLE[450 - a]
    beta = _SIN_TABLE[a]

    ang = np.arange(arc_start, arc_end + delta, delta, dtype=np.int64)
    ang = np.minimum(ang, arc_end)
    ang = np.where(ang < 0, ang + 360, ang)
    cx, cy = float(center[0]), float(center[1])
    x = float(axes[0]) * _SIN_TABLE[450 - ang]
    y = float(axes[1]) * _SIN_TABLE[ang]
    px = cx + x * alpha - y * beta
    py = cy + x * beta + y * alpha
    if len(ang) == 1:  # double version: one point -> two copies of the centre
        px = np.array([cx, cx])
        py = np.array([cy, cy])

    pts = np.stack([_cv_round(px), _cv_round(py)], axis=1)
    # int version: drop consecutive duplicates (the first point is compared with INT_MIN, never equal)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) == 1:
        pts = np.array([center, center], dtype=np.int64)
    return pts


# --- Line (8-connected, with clipLine) --------------------------------------------------------------------


def _clip_lines(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv::clipLine(Size2l, Point2l&, Point2l&) on arrays of segments; returns clipped ends and `inside`."""
    x1, y1, x2, y2 = (np.array(a, dtype=np.int64) for a in (x1, y1, x2, y2))
    right, bottom = width - 1, height - 1
    if width <= 0 or height <= 0:
        return x1, y1, x2, y2, np.zeros(x1.shape, dtype=bool)

    def code(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x < 0) * 1 + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    active = ((c1 & c2) == 0) & ((c1 | c2) != 0)

    def fdiv(num: np.ndarray, mul: np.ndarray, den: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # (int64)((double)num * mul / den), evaluated only where mask (den != 0 there)
        safe = np.where(mask, den, 1).astype(np.float64)
        q = num.astype(np.float64) * mul.astype(np.float64) / safe
        return np.where(mask, np.trunc(q), 0).astype(np.int64)

    m = active & ((c1 & 12) != 0)
    if m.any():
        a = np.where(c1 < 8, 0, bottom)
        x1 = x1 + fdiv(a - y1, x2 - x1, y2 - y1, m)
        y1 = np.where(m, a, y1)
        c1 = np.where(m, (x1 < 0) * 1 + (x1 > right) * 2, c1)
    m = active & ((c2 & 12) != 0)
    if m.any():
        a = np.where(c2 < 8, 0, bottom)
        x2 = x2 + fdiv(a - y2, x2 - x1, y2 - y1, m)
        y2 = np.where(m, a, y2)
        c2 = np.where(m, (x2 < 0) * 1 + (x2 > right) * 2, c2)
    active2 = active & ((c1 & c2) == 0) & ((c1 | c2) != 0)
    m = active2 & (c1 != 0)
    if m.any():
        a = np.where(c1 == 1, 0, right)
        y1 = y1 + fdiv(a - x1, y2 - y1, x2 - x1, m)
        x1 = np.where(m, a, x1)
        c1 = np.where(m, 0, c1)
    m = active2 & (c2 != 0)
    if m.any():
        a = np.where(c2 == 1, 0, right)
        y2 = y2 + fdiv(a - x2, y2 - y1, x2 - x1, m)
        x2 = np.where(m, a, x2)
        c2 = np.where(m, 0, c2)
    return x1, y1, x2, y2, (c1 | c2) == 0


def _line8_pixels(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels cv::Line(img, pt1, pt2, color, 8) sets, for arrays of segments: (xs, ys), all inside the image."""
    x1, y1, x2, y2 = (np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (x1, y1, x2, y2))
    # LineIterator clips only when an end is outside the image (unsigned comparisons)
    outside = (
        (x1 < 0) | (x1 >= width) | (x2 < 0) | (x2 >= width) | (y1 < 0) | (y1 >= height) | (y2 < 0) | (y2 >= height)
    )
    if outside.any():
        cx1, cy1, cx2, cy2, inside = _clip_lines(x1, y1, x2, y2, width, height)
        keep = ~outside | inside
        x1, y1, x2, y2 = (np.where(outside, c, o)[keep] for c, o in ((cx1, x1), (cy1, y1), (cx2, x2), (cy2, y2)))
    if len(x1) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    # left to right: start from the end with the smaller x
    swap = x2 < x1
    sx = np.where(swap, x2, x1)
    sy = np.where(swap, y2, y1)
    dx = np.abs(x2 - x1)
    dy = np.where(swap, y1 - y2, y2 - y1)
    ystep = np.where(dy < 0, -1, 1)
    dy = np.abs(dy)
    vert = dy > dx
    major = np.maximum(dx, dy)
    minor = np.minimum(dx, dy)
    count = major + 1

    seg = np.repeat(np.arange(len(count)), count)
    starts = np.cumsum(count) - count
    k = np.arange(int(count.sum()), dtype=np.int64) - starts[seg]
    big, small = major[seg], minor[seg]
    # Bresenham: after k steps the minor coordinate moved ceil((2*small*k - big) / (2*big)) times
    den = np.maximum(2 * big, 1)
    moved = -((big - 2 * small * k) // den)
    v = vert[seg]
    xs = sx[seg] + np.where(v, moved, k)
    ys = sy[seg] + ystep[seg] * np.where(v, k, moved)
    return xs, ys


# --- FillConvexPoly ---------------------------------------------------------------------------------------


def _fill_convex_poly(
    pts: np.ndarray, width: int, height: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[int, int, int]]]:
    """cv::fillConvexPoly(img, pts, color, LINE_8, shift=0) as (outline pixels (xs, ys), spans [(y, xl, xr)])."""
    npts = len(pts)
    v = pts.astype(np.int64)
    # outline: Line(v[i-1], v[i]) for every i, the first from the last vertex
    outline = _line8_pixels(np.roll(v[:, 0], 1), np.roll(v[:, 1], 1), v[:, 0], v[:, 1], width, height)

    vx = [int(a) for a in v[:, 0]]
    vy = [int(a) for a in v[:, 1]]
    spans: list[tuple[int, int, int]] = []
    ymin = min(vy)
    imin = vy.index(ymin)
    ymax = max(vy)
    if npts < 3 or max(vx) < 0 or ymax < 0 or min(vx) >= width or ymin >= height:
        return outline, spans
    ymax = min(ymax, height - 1)

    e_idx = [imin, imin]
    e_di = (1, npts - 1)
    e_x = [-_XY_ONE, -_XY_ONE]
    e_dx = [0, 0]
    e_ye = [ymin, ymin]
    edges = npts
    half = _XY_ONE >> 1
    y = ymin
    while True:
        for i in (0, 1):
            if y >= e_ye[i]:
                idx0 = e_idx[i]
                di = e_di[i]
                idx = idx0 + di
                if idx >= npts:
                    idx -= npts
                while True:
                    more = edges > 0
                    edges -= 1
                    if not more:
                        break
                    ty = vy[idx]
                    if ty > y:
                        xs = vx[idx0] << _XY_SHIFT
                        xe = vx[idx] << _XY_SHIFT
                        e_ye[i] = ty
                        e_dx[i] = _cdiv((xe - xs) * 2 + (ty - y), 2 * (ty - y))
                        e_x[i] = xs
                        e_idx[i] = idx
                        break
                    idx0 = idx
                    idx += di
                    if idx >= npts:
                        idx -= npts
        if edges < 0:
            break
        if y < 0:
            # Rows above the image draw nothing; until the next edge switch only x advances, so jump there
            # (the C loop steps row by row; the state reached is the same).
            target = min(e_ye[0], e_ye[1], 0, ymax + 1)
            e_x[0] += e_dx[0] * (target - y)
            e_x[1] += e_dx[1] * (target - y)
            y = target
            if y > ymax:
                break
            continue
        else:
            left, right = (1, 0) if e_x[0] > e_x[1] else (0, 1)
            xx1 = (e_x[left] + half) >> _XY_SHIFT
            xx2 = (e_x[right] + half) >> _XY_SHIFT
            if xx2 >= 0 and xx1 < width:
                xx1 = max(xx1, 0)
                xx2 = min(xx2, width - 1)
                if xx1 <= xx2:
                    spans.append((y, xx1, xx2))
        e_x[0] += e_dx[0]
        e_x[1] += e_dx[1]
        y += 1
        if y > ymax:
            break
    return outline, spans


# --- Circle -----------------------------------------------------------------------------------------------


def _fill_circle_spans(cx: int, cy: int, radius: int, width: int, height: int) -> list[tuple[int, int, int]]:
    """Spans (y, xl, xr) that cv::circle(img, center, radius, color, FILLED) sets (the LINE_8 Circle routine)."""
    spans: list[tuple[int, int, int]] = []
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1
    inside = radius <= cx < width - radius and radius <= cy < height - radius

    def hline(y: int, xl: int, xr: int) -> None:
        if xl <= xr:
            spans.append((y, xl, xr))

    while dx >= dy:
        y11, y12, y21, y22 = cy - dy, cy + dy, cy - dx, cy + dx
        x11, x12, x21, x22 = cx - dx, cx + dx, cx - dy, cx + dy
        if inside:
            hline(y11, x11, x12)
            hline(y12, x11, x12)
            hline(y21, x21, x22)
            hline(y22, x21, x22)
        elif x11 < width and x12 >= 0 and y21 < height and y22 >= 0:
            x11 = max(x11, 0)
            x12 = min(x12, width - 1)
            if 0 <= y11 < height:
                hline(y11, x11, x12)
            if 0 <= y12 < height:
                hline(y12, x11, x12)
            if x21 < width and x22 >= 0:
                x21 = max(x21, 0)
                x22 = min(x22, width - 1)
                if 0 <= y21 < height:
                    hline(y21, x21, x22)
                if 0 <= y22 < height:
                    hline(y22, x21, x22)
        dy += 1
        err += plus
        plus += 2
        mask = 0 if err <= 0 else -1
        err -= minus & mask
        dx += mask
        minus -= mask & 2
    return spans


# --- painting ---------------------------------------------------------------------------------------------


def _paint_spans(canvas: np.ndarray, spans: Sequence[tuple[int, int, int]], color: tuple[int, int, int]) -> None:
    for y, xl, xr in spans:
        canvas[y, xl : xr + 1] = color


def _paint_convex_poly(canvas: np.ndarray, pts: np.ndarray, color: tuple[int, int, int]) -> None:
    h, w = canvas.shape[:2]
    (xs, ys), spans = _fill_convex_poly(pts, w, h)
    if len(xs):
        canvas[ys, xs] = color
    if spans:
        sp = np.asarray(spans, dtype=np.int64)
        y0, y1 = int(sp[:, 0].min()), int(sp[:, 0].max())
        x0, x1 = int(sp[:, 1].min()), int(sp[:, 2].max())
        cols = np.arange(x0, x1 + 1)
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
        mask[sp[:, 0] - y0] = (cols >= sp[:, 1:2]) & (cols <= sp[:, 2:3])
        canvas[y0 : y1 + 1, x0 : x1 + 1][mask] = color


def _as_points(arr: object, n: int) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.shape != (n, 2):
        raise ValueError(f"expected an array of shape [{n}, 2], got {a.shape}")
    return a


def draw_skeleton(
    width: int,
    height: int,
    bodies: Sequence[tuple[np.ndarray, np.ndarray]],
    hands: Sequence[np.ndarray] | None = None,
    *,
    stick_width: int = 4,
    joint_radius: int = 4,
    limb_dim: float = 0.6,
) -> np.ndarray:
    """Return a new uint8 [height, width, 3] RGB image.

    bodies: sequence of (joints, visible) per person, joints a float array [18, 2] of normalised (x, y), visible a
    bool array [18]. hands: optional sequence of float arrays [21, 2] normalised (missing points are (0, 0) or
    negative). Joints with non-finite coordinates are treated as missing.

    Same pixels as controlnet_aux's ``draw_bodypose`` followed by ``draw_handpose`` (hand edges 1 px wide,
    hand points radius 1) on a black canvas, drawn with OpenCV.
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas size must be positive, got {width}x{height}")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    W, H = float(width), float(height)

    people: list[tuple[np.ndarray, np.ndarray]] = []
    for joints, visible in bodies:
        j = _as_points(joints, 18)
        vis = np.asarray(visible, dtype=bool).reshape(18) & np.isfinite(j).all(axis=1)
        people.append((j, vis))

    # limbs: for each limb, for each person (this order decides the overlaps)
    for i in range(_N_LIMBS_DRAWN):
        a, b = LIMB_SEQ[i]
        color = BODY_COLORS[i]
        for j, vis in people:
            if not (vis[a] and vis[b]):
                continue
            # controlnet_aux's names: Y holds the x pixel, X the y pixel
            Y0, Y1 = float(j[a, 0]) * W, float(j[b, 0]) * W
            X0, X1 = float(j[a, 1]) * H, float(j[b, 1]) * H
            m_x = (X0 + X1) / 2.0
            m_y = (Y0 + Y1) / 2.0
            length = math.sqrt((X0 - X1) ** 2 + (Y0 - Y1) ** 2)
            angle = math.degrees(math.atan2(X0 - X1, Y0 - Y1))
            poly = _ellipse_poly((int(m_y), int(m_x)), (int(length / 2), int(stick_width)), int(angle), 0, 360, 1)
            _paint_convex_poly(canvas, poly, color)

    # (canvas * 0.6).astype(np.uint8), as a lookup table
    lut = (np.arange(256, dtype=np.float64) * limb_dim).astype(np.uint8)
    canvas = lut[canvas]

    for i in range(18):
        color = BODY_COLORS[i]
        for j, vis in people:
            if not vis[i]:
                continue
            x = int(float(j[i, 0]) * W)
            y = int(float(j[i, 1]) * H)
            _paint_spans(canvas, _fill_circle_spans(x, y, int(joint_radius), width, height), color)

    for hand in hands or ():
        pts = _as_points(hand, 21)
        finite = np.isfinite(pts).all(axis=1)
        ipts = [
            (int(px * W), int(py * H)) if ok else (0, 0)
            for (px, py), ok in zip(pts.tolist(), finite.tolist())
        ]
        for ie, (e0, e1) in enumerate(HAND_EDGES):
            (x1, y1), (x2, y2) = ipts[e0], ipts[e1]
            if x1 > _HAND_EPS and y1 > _HAND_EPS and x2 > _HAND_EPS and y2 > _HAND_EPS:
                xs, ys = _line8_pixels(x1, y1, x2, y2, width, height)
                canvas[ys, xs] = _HAND_EDGE_COLORS[ie]
        for x, y in ipts:
            if x > _HAND_EPS and y > _HAND_EPS:
                _paint_spans(canvas, _fill_circle_spans(x, y, 1, width, height), _HAND_POINT_COLOR)
    return canvas
