"""The synthetic parts dataset: seeded, procedurally drawn creatures, no files.

Why it looks like this: location instability needs ground-truth part positions, and a performer
trained on it should need parts to classify. So each creature category differs only in part
*shapes* (head/ear/beak/horn, tail, leg count and build), never in colour, size or torso; colours
come from the same distribution as the clutter; and the clutter contains lone part-like shapes
(heads with ears, beaks, tails, legs, torsos) so no single part or blob identifies a class.

Every image comes from its own generator seeded by (seed, stream, index), so the same seed always
gives the same pixels, and the train and test streams never share an image. Shapes are polygons in a
canonical frame (torso at the origin, facing +x, y down, unit = body scale), transformed by a random
flip, rotation, scale and position, drawn at 2x with Pillow and averaged down 2x2 for anti-aliasing.
Landmarks are 0-based pixel centres of the output image; NaN when outside it.
"""

import dataclasses
import math
import multiprocessing
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("fox", "bird", "lizard", "dino")
LANDMARKS = ("head", "neck", "torso", "tail")
PART_IDS = {"head": 1, "neck": 2, "torso": 3, "tail": 4, "legs": 5}


@dataclasses.dataclass
class Scene:
    """Everything needed to render one image; `creature` parts are (part_id, polygon, colour)."""

    size: int
    background: tuple
    distractors: list
    creature: list
    landmarks: np.ndarray
    category: int
    texture: tuple
    noise_seed: int


def _ellipse(cx, cy, a, b, n=20):
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


def _strip(points, half_widths):
    """A polygon around a polyline, `half_widths` per vertex (legs, necks, tails)."""
    points = np.asarray(points, dtype=np.float64)
    d = np.gradient(points, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) * np.asarray(half_widths)[:, None]
    return np.concatenate([points + normal, (points - normal)[::-1]])


def _inside(points, poly):
    """Which of `points` [N, 2] lie inside polygon `poly` [M, 2] (even-odd ray casting)."""
    x, y = points[:, :1], points[:, 1:]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-12) + x0)
    return crosses.sum(axis=1) % 2 == 1


def _triangle(base_a, base_b, tip):
    return np.array([base_a, base_b, tip], dtype=np.float64)


def _polar(centre, radius, degrees):
    r = math.radians(degrees)
    return (centre[0] + radius * math.cos(r), centre[1] + radius * math.sin(r))


def _head(category, rng, c):
    """Head polygons (drawn in order) around centre `c`, by category."""
    if category == 0:  # fox: round head, two pointed ears, small snout
        r = 0.36 * rng.uniform(0.9, 1.1)
        ears = [_triangle(_polar(c, r * 0.9, a - 22), _polar(c, r * 0.9, a + 22),
                          _polar(c, r * 2.0, a)) for a in (-60, -115)]
        snout = _triangle(_polar(c, r * 0.8, -25), _polar(c, r * 0.8, 25), _polar(c, r * 1.5, 0))
        return ears + [_ellipse(c[0], c[1], r, r), snout]
    if category == 1:  # bird: round head, long beak
        r = 0.32 * rng.uniform(0.9, 1.1)
        beak = _triangle(_polar(c, r * 0.8, -22), _polar(c, r * 0.8, 22), _polar(c, r * 2.4, 5))
        return [_ellipse(c[0], c[1], r, r), beak]
    if category == 2:  # lizard: long flat head
        r = 0.26 * rng.uniform(0.9, 1.1)
        return [_ellipse(c[0] + 0.15, c[1], r * 2.0, r)]
    r = 0.34 * rng.uniform(0.9, 1.1)  # dino: blocky head with a nose horn
    x, y = c
    box = np.array([[x - r, y - r * 0.8], [x + r * 1.2, y - r * 0.8],
                    [x + r * 1.3, y + r * 0.6], [x - r, y + r * 0.8]])
    horn = _triangle((x + r * 0.4, y - r * 0.75), (x + r * 1.0, y - r * 0.75), (x + r * 0.9, y - r * 2.0))
    return [horn, box]


def _tail(category, rng, base):
    """Tail polygons and the tail-tip landmark (kept inside the drawn tip), by category."""
    if category == 0:  # fox: bushy, raised
        ang = math.radians(rng.uniform(-160, -125))
        length, widths = 1.4, (0.14, 0.32, 0.34, 0.22)
    elif category == 1:  # bird: fan widening to the end
        ang = math.radians(rng.uniform(160, 190))
        length, widths = 1.0, (0.10, 0.22, 0.34, 0.46)
    elif category == 2:  # lizard: long, thin, curved
        ang = math.radians(rng.uniform(165, 200))
        length, widths = 2.0, (0.22, 0.17, 0.14, 0.13)
    else:  # dino: heavy, tapering, low
        ang = math.radians(rng.uniform(155, 180))
        length, widths = 1.5, (0.30, 0.22, 0.16, 0.13)
    bend = rng.uniform(-0.35, 0.35) if category == 2 else rng.uniform(-0.1, 0.1)
    t = np.linspace(0.0, 1.0, len(widths))
    angles = ang + bend * t
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (length / (len(t) - 1))
    points = np.concatenate([[base], base + np.cumsum(steps[1:], axis=0)])
    polys = [_strip(points, widths)]
    if category == 3:  # dorsal spikes on the dino's tail
        for i in range(len(points) - 1):
            p, q = points[i], points[i + 1]
            n = np.array([(q - p)[1], -(q - p)[0]]) / (np.linalg.norm(q - p) + 1e-9)
            side = n if n[1] < 0 else -n
            polys.append(_triangle(p + side * widths[i] * 0.8, q + side * widths[i + 1] * 0.8,
                                   (p + q) / 2 + side * (widths[i] + 0.3)))
    back = points[-2] - points[-1]
    tip = points[-1] + back / np.linalg.norm(back) * 0.2  # a little inside the drawn end
    return polys, tip


def _legs(category, rng, a, b):
    """Leg polygons; the count and build are the category's third cue."""
    legs = []
    if category in (0, 2):  # four legs: straight (fox) or bent and splayed (lizard)
        for x in (-0.6, -0.35, 0.35, 0.6):
            top = (x * a, 0.5 * b)
            if category == 0:
                pts = [top, (x * a + rng.uniform(-0.15, 0.15), 0.5 * b + 0.95)]
                legs.append(_strip(pts, (0.09, 0.07)))
            else:
                out = math.copysign(0.35, x)
                pts = [top, (x * a + out, 0.5 * b + 0.3), (x * a + out * 1.6, 0.5 * b + 0.5)]
                legs.append(_strip(pts, (0.09, 0.08, 0.08)))
    else:  # two legs: thin with feet (bird) or thick (dino)
        for x in (-0.25, 0.2):
            top = (x * a, 0.6 * b)
            if category == 1:
                foot = (x * a, 0.6 * b + 0.85)
                legs.append(_strip([top, foot], (0.05, 0.05)))
                legs.append(_strip([foot, (foot[0] + 0.3, foot[1])], (0.05, 0.05)))
            else:
                legs.append(_strip([top, (x * a + 0.05, 0.6 * b + 0.75)], (0.17, 0.14)))
    return legs


NECKS = {0: (1.30, -0.95, 0.14), 1: (1.20, -1.05, 0.10), 2: (1.65, -0.45, 0.17), 3: (1.55, -1.55, 0.13)}


def _creature(category, rng):
    """Canonical-frame (part_id, polygon) list and landmarks for one creature."""
    a, b = rng.uniform(0.9, 1.1), 0.55 * rng.uniform(0.85, 1.15)
    hx, hy, neck_w = NECKS[category]
    head_c = (hx * a + rng.uniform(-0.1, 0.1), hy + rng.uniform(-0.15, 0.15))
    neck_0 = np.array([0.65 * a, -0.5 * b])
    head_polys = _head(category, rng, head_c)
    tail_polys, tail_tip = _tail(category, rng, np.array([-0.85 * a, -0.15 * b]))
    # The neck landmark: middle of the neck's visible stretch between torso and head.
    t = np.linspace(0.0, 1.0, 41)[:, None]
    seg = neck_0 + t * (np.array(head_c) - neck_0)
    free = (seg[:, 0] / a) ** 2 + (seg[:, 1] / b) ** 2 > 1.0
    for poly in head_polys:
        free &= ~_inside(seg, poly)
    neck_pt = seg[free].mean(axis=0) if free.any() else seg[20]
    parts = [(PART_IDS["tail"], p) for p in tail_polys]
    parts += [(PART_IDS["legs"], p) for p in _legs(category, rng, a, b)]
    parts.append((PART_IDS["torso"], _ellipse(0.0, 0.0, a, b, 28)))
    parts.append((PART_IDS["neck"], _strip([neck_0, head_c], (neck_w * 1.3, neck_w))))
    parts += [(PART_IDS["head"], p) for p in head_polys]
    landmarks = np.array([head_c, neck_pt, (0.0, 0.0), tail_tip], dtype=np.float64)
    return parts, landmarks


def _distractor(rng):
    """One clutter polygon set: a plain shape or a lone creature part (so parts alone mislead)."""
    kind = rng.integers(7)
    cat = int(rng.integers(len(CATEGORIES)))
    if kind == 0:
        return [_ellipse(0, 0, rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.6))]
    if kind == 1:
        n = rng.integers(3, 7)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.3, 0.9, n)
        return [np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)]
    if kind == 2:
        return [_strip([(-0.8, 0), (0.8, rng.uniform(-0.3, 0.3))], (0.08, 0.08))]
    if kind == 3:
        return _head(cat, rng, (0.0, 0.0))
    if kind == 4:
        return _tail(cat, rng, np.zeros(2))[0]
    if kind == 5:
        return _legs(cat, rng, 1.0, 0.55)
    return [_ellipse(0, 0, rng.uniform(0.8, 1.1), rng.uniform(0.45, 0.65), 28)]  # torso-like


def _scramble(parts, rng):
    """A decoy for negatives: a creature's parts, each part group moved and turned on its own."""
    moved = {}
    for pid in sorted({pid for pid, _ in parts}):
        theta = rng.uniform(0, 2 * np.pi)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        centre = np.concatenate([p for q, p in parts if q == pid]).mean(axis=0)
        moved[pid] = (rot, centre, rng.uniform(-1.6, 1.6, 2))
    return [(pid, (p - moved[pid][1]) @ moved[pid][0].T + moved[pid][1] + moved[pid][2])
            for pid, p in parts]


def _placement(rng, size, scale_range, centre_range):
    """Random flip + rotation + scale + position as (matrix, offset) into 2x-resolution pixels."""
    hi = 2 * size
    scale = rng.uniform(*scale_range) * hi
    theta = math.radians(rng.uniform(-30, 30))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    matrix = rot @ np.diag([flip, 1.0]) * scale
    offset = rng.uniform(*centre_range, size=2) * hi
    return matrix, offset


def _colour(rng, avoid=None, min_distance=80.0):
    """A random RGB colour, far from `avoid` so a creature never vanishes into its background."""
    while True:
        c = rng.integers(0, 256, 3)
        if avoid is None or np.linalg.norm(c - np.asarray(avoid)) >= min_distance:
            return tuple(int(v) for v in c)


def make_scene(rng: np.random.Generator, category: Optional[int], size: int = 64) -> Scene:
    """Sample one image: a creature of `category` (an index into CATEGORIES) or, for None, a
    background-only image (half of them with a scrambled-parts decoy, drawn like a creature but
    without landmarks, so "parts present" is not enough: their configuration matters)."""
    top, bottom = _colour(rng), _colour(rng)
    mean_bg = (np.asarray(top) + np.asarray(bottom)) / 2
    distractors = []
    for _ in range(rng.integers(4, 9) + (2 if category is None else 0)):
        m, o = _placement(rng, size, (0.07, 0.16), (0.0, 1.0))
        distractors.append(([p @ m.T + o for p in _distractor(rng)], _colour(rng)))
    creature, landmarks = [], np.full((len(LANDMARKS), 2), np.nan)
    texture = (0, (0, 0, 0), 0.0, 0.0)
    decoy = category is None and rng.random() < 0.5
    if category is not None or decoy:
        parts, canon = _creature(int(rng.integers(len(CATEGORIES))) if decoy else category, rng)
        if decoy:
            parts = _scramble(parts, rng)
        m, o = _placement(rng, size, (0.11, 0.17), (0.25, 0.75))
        body = np.asarray(_colour(rng, avoid=mean_bg))
        for pid, poly in parts:
            jitter = body + rng.integers(-25, 26, 3)
            creature.append((pid, poly @ m.T + o, tuple(int(v) for v in np.clip(jitter, 0, 255))))
        if not decoy:
            landmarks = (canon @ m.T + o - 0.5) / 2.0  # 2x pixel centres -> output pixel centres
            outside = np.any((landmarks < -0.5) | (landmarks > size - 0.5), axis=1)
            landmarks[outside] = np.nan
        # Texture in the creature's frame: 0 none, 1 stripes, 2 spots.
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        texture = (int(rng.integers(3)), _colour(rng, avoid=body, min_distance=60),
                   float(rng.uniform(0.3, 0.6) * scale), float(math.atan2(m[1, 0], m[0, 0])))
    return Scene(size=size, background=(top, bottom, float(rng.uniform(0, 2 * np.pi))),
                 distractors=distractors, creature=creature, landmarks=landmarks,
                 category=-1 if category is None else category, texture=texture,
                 noise_seed=int(rng.integers(2 ** 31)))


def render(scene: Scene, with_creature: bool = True):
    """(uint8 [S, S, 3] image, uint8 [S, S] part-id map) of a scene; ids as in PART_IDS, 0 = none."""
    size, hi = scene.size, 2 * scene.size
    top, bottom, direction = scene.background
    yy, xx = np.mgrid[0:hi, 0:hi].astype(np.float32) / hi
    ramp = np.clip(0.5 + (xx - 0.5) * math.cos(direction) + (yy - 0.5) * math.sin(direction), 0, 1)
    bg = np.asarray(top, np.float32) * (1 - ramp[..., None]) + np.asarray(bottom, np.float32) * ramp[..., None]
    canvas = Image.fromarray(bg.astype(np.uint8))
    ids = Image.new("L", (hi, hi), 0)
    draw, draw_ids = ImageDraw.Draw(canvas), ImageDraw.Draw(ids)
    for polys, colour in scene.distractors:
        for p in polys:
            draw.polygon([tuple(v) for v in p], fill=colour)
    if with_creature:
        for pid, poly, colour in scene.creature:
            pts = [tuple(v) for v in poly]
            draw.polygon(pts, fill=colour)
            draw_ids.polygon(pts, fill=pid)
    pixels = np.asarray(canvas, dtype=np.float32)
    part_ids = np.asarray(ids)
    kind, colour, wavelength, angle = scene.texture
    if with_creature and kind:
        k = 2 * np.pi * hi / wavelength
        u = (xx * math.cos(angle) + yy * math.sin(angle)) * k
        v = (yy * math.cos(angle) - xx * math.sin(angle)) * k
        pattern = np.sin(u) > 0.3 if kind == 1 else (np.sin(u) * np.sin(v) > 0.35)
        mask = pattern & np.isin(part_ids, (PART_IDS["torso"], PART_IDS["tail"]))
        pixels[mask] = pixels[mask] * 0.3 + np.asarray(colour, np.float32) * 0.7
    small = pixels.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    small += np.random.default_rng(scene.noise_seed).normal(0.0, 6.0, small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), part_ids[1::2, 1::2].copy()


# Images per drawing process; below 2x this, drawing stays in the calling process.
IMAGES_PER_WORKER = 1000


def generate(num: int, classes: Sequence[Optional[int]], size: int = 64, seed: int = 0,
             stream: int = 0, workers: Optional[int] = None):
    """`num` images balanced over `classes` (category indices; None = background-only).

    Returns (images uint8 [N,S,S,3], class positions int32 [N] into `classes`, landmarks float32
    [N,K,2] in LANDMARKS order). `stream` separates independent sets (e.g. 0 train, 1 test).
    `workers`: drawing processes (default: one per usable core, at most one per IMAGES_PER_WORKER
    images); every image is seeded by its index, so the pixels do not depend on it.
    """
    order = np.random.default_rng([seed, stream, 2 ** 31]).permutation(np.arange(num) % len(classes))
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(cores or 1, num // IMAGES_PER_WORKER)
    bounds = np.linspace(0, num, max(1, workers) + 1).astype(int)
    jobs = [(range(start, stop), order[start:stop], classes, size, seed, stream)
            for start, stop in zip(bounds[:-1], bounds[1:])]
    if len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers only draw with numpy and Pillow, and start without re-importing.
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            parts = pool.starmap(_draw, jobs)
    else:
        parts = [_draw(*job) for job in jobs]
    images = np.concatenate([part[0] for part in parts])
    landmarks = np.concatenate([part[1] for part in parts])
    return images, order.astype(np.int32), landmarks


def _draw(indices, which_classes, classes, size, seed, stream):
    """(images, landmarks) of the images at `indices` of one stream."""
    images = np.empty((len(indices), size, size, 3), np.uint8)
    landmarks = np.empty((len(indices), len(LANDMARKS), 2), np.float32)
    for j, (i, which) in enumerate(zip(indices, which_classes)):
        scene = make_scene(np.random.default_rng([seed, stream, i]), classes[which], size)
        images[j] = render(scene)[0]
        landmarks[j] = scene.landmarks
    return images, landmarks
