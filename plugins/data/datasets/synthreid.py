"""SynthReID: a person re-identification dataset that is drawn, not downloaded.

On first use the dataset is generated into ``<root>/synthreid/`` in Market-1501's
layout (``bounding_box_train/``, ``bounding_box_test/``, ``query/``; files named
``PPPP_cCsS_FFFFFF_BB.jpg``), deterministically from a seed, and then parsed
exactly like Market-1501, so every config can run offline.

Identity lives in a combination of attributes, each shared by many people:
clothing colours (from a palette with look-alike colours), garment pattern,
sleeve and lower-garment type, hair, skin, body proportions and accessories.
A third of the identities are near copies of another one with one or two
attributes changed. Every camera has its own scene, colour cast, brightness,
sharpness, noise, typical viewpoint (front, back or side, which hides or shows
backpacks, logos and faces) and person scale; every shot adds pose, box
jitter, clutter and occlusion.

Usage::

    from plugins.data.datasets import synthreid
    synthreid.register()                            # once: 'synthreid' is a torchreid source
    synthreid.prepare('reid-data', num_train_ids=50)  # optional: another spec than the default
    ImageDataManager(root='reid-data', sources='synthreid', ...)

The host builds datasets without a spec, so the dataset is what is on disk: the launcher
generates the config's spec (``synthreid.*`` keys) with :func:`prepare` before it builds
the data manager.
"""
import copy
import json
import os
import os.path as osp
import shutil
import tempfile
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np

from torchreid.reid.data import datasets as torchreid_datasets
from torchreid.reid.data import register_image_dataset
from torchreid.reid.data.datasets.dataset import ImageDataset
from torchreid.reid.data.datasets.image.market1501 import Market1501

from plugins import distributed

NAME = 'synthreid'

# Bump whenever a change to the generator changes its output: stored datasets
# made by another version are then regenerated.
GENERATOR_VERSION = 1

DEFAULT_SPEC = {
    'seed': 0,
    'num_train_ids': 150,
    'num_test_ids': 100,
    'num_cams': 6,
    'cams_per_id': [3, 6],  # each identity is seen by this many cameras (inclusive range)
    'images_per_id_per_cam': [2, 5],  # images of one identity in one camera (inclusive range)
    'query_per_id': 3,  # one query per camera of a test identity, in at most this many cameras
    'num_distractors': 400,  # pid 0 gallery images: other people and false detections
    'num_junk': 150,  # pid -1 gallery images: fragments, ignored by the loader
    'height': 128,  # stored image size
    'width': 64,
}

_RANGE_KEYS = ('cams_per_id', 'images_per_id_per_cam')
SUPERSAMPLE = 2  # people are drawn at this multiple of the stored size, then downsampled
JPEG_QUALITY = 90
SUBSET_DIRS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
VIEWS = ('front', 'back', 'left', 'right')

# Palettes (RGB) with deliberate look-alikes (navy/blue/denim, red/dark red, ...).
UPPER_COLOURS = (
    (235, 235, 230), (180, 180, 180), (95, 95, 100), (30, 30, 35), (200, 35, 40),
    (125, 25, 35), (230, 145, 170), (235, 125, 35), (230, 205, 60), (130, 195, 100),
    (45, 125, 65), (110, 115, 55), (35, 135, 140), (125, 170, 225), (45, 80, 190),
    (30, 40, 90), (110, 55, 150), (120, 75, 45), (210, 190, 150),
)
LOWER_COLOURS = (
    (25, 25, 30), (80, 80, 85), (165, 165, 165), (35, 45, 85), (60, 90, 140),
    (110, 140, 180), (180, 160, 110), (110, 75, 45), (215, 200, 170), (230, 230, 225),
    (95, 100, 55), (120, 30, 40),
)
SKIN_COLOURS = ((245, 205, 175), (225, 180, 140), (195, 145, 105), (150, 100, 70), (100, 65, 45))
HAIR_COLOURS = ((20, 18, 18), (60, 40, 25), (110, 75, 40), (200, 170, 100), (160, 160, 160), (140, 60, 30))
SHOE_COLOURS = ((20, 20, 20), (235, 235, 235), (100, 65, 35), (120, 120, 125), (40, 50, 120))
PATTERNS = ('plain', 'plain', 'hstripes', 'vstripes', 'checks', 'logo')
LOWER_TYPES = ('trousers', 'trousers', 'trousers', 'shorts', 'skirt')
LOGO_SHAPES = ('circle', 'square', 'triangle')


# ----------------------------------------------------------------------------
# Spec handling
# ----------------------------------------------------------------------------

def validate_spec(spec):
    """Return a normalised copy of a full ``spec`` (ranges as [lo, hi] lists); raise on bad values."""
    unknown = set(spec) - set(DEFAULT_SPEC)
    missing = set(DEFAULT_SPEC) - set(spec)
    if unknown or missing:
        raise TypeError('synthreid spec: unknown keys {}, missing keys {}'.format(
            sorted(unknown), sorted(missing)))

    def check(ok, message):
        if not ok:
            raise ValueError('synthreid spec: ' + message)

    spec = copy.deepcopy(spec)
    for key in DEFAULT_SPEC:
        if key in _RANGE_KEYS:
            lo, hi = (spec[key], spec[key]) if np.isscalar(spec[key]) else spec[key]
            spec[key] = [int(lo), int(hi)]
            check(1 <= lo <= hi, '{} must be a count or an inclusive range [lo, hi], 1 <= lo <= hi'.format(key))
        else:
            spec[key] = int(spec[key])
    # Market1501.process_dir, which parses the folders, accepts cameras 1-6 and pids up to 1501.
    check(2 <= spec['num_cams'] <= 6, 'num_cams must be in 2..6')
    check(spec['num_train_ids'] >= 1 and spec['num_test_ids'] >= 1, 'need at least one train and one test id')
    check(spec['num_train_ids'] + spec['num_test_ids'] <= 1501, 'at most 1501 identities in total')
    check(spec['images_per_id_per_cam'][1] <= 1000, 'at most 1000 images per identity and camera')
    check(2 <= spec['cams_per_id'][0] and spec['cams_per_id'][1] <= spec['num_cams'],
          'cams_per_id must lie in 2..num_cams (queries need another camera to match)')
    check(spec['query_per_id'] >= 1, 'query_per_id must be >= 1')
    check(0 <= spec['num_distractors'] < 100000 and 0 <= spec['num_junk'] < 100000,
          'num_distractors and num_junk must be in 0..99999')
    check(spec['height'] >= 16 and spec['width'] >= 8, 'images must be at least 16x8 (height x width)')
    return spec


def prepare(root, **spec):
    """Generate ``<root>/synthreid`` from DEFAULT_SPEC updated with ``spec``, unless it holds
    that dataset already; return the full spec."""
    full = validate_spec({**DEFAULT_SPEC, **spec})
    ensure_generated(dataset_folder(root), full)
    return full


def dataset_folder(root):
    return osp.join(osp.abspath(osp.expanduser(root)), NAME)


# ----------------------------------------------------------------------------
# People
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """Everything that makes a person recognisable; colours are RGB tuples, None means absent."""
    skin: tuple
    hair: tuple
    long_hair: bool
    upper: tuple
    upper2: tuple  # stripe, check or logo colour
    pattern: str
    logo: str
    stripe: float  # stripe period as a fraction of the person's height
    long_sleeves: bool
    lower: tuple
    lower_type: str
    shoes: tuple
    hat: tuple
    backpack: tuple
    bag: tuple
    bag_side: int  # +1: on the person's right, -1: left
    build: float  # width multiplier
    head: float  # head size multiplier
    legs: float  # leg length as a fraction of the height


def _shade(colour, factor):
    """``colour`` darkened (factor < 1) or lightened."""
    return tuple(int(min(255, factor * c)) for c in colour)


def _pick(rng, palette, jitter=12.0):
    """A palette colour with a small per-person shade jitter."""
    colour = np.asarray(palette[rng.integers(len(palette))], np.float64) + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(colour, 0, 255))


def _maybe(rng, p, palette):
    """A colour from ``palette`` with probability ``p``, else None."""
    return _pick(rng, palette) if rng.random() < p else None


def sample_identity(rng):
    """Draw a random person."""
    upper = _pick(rng, UPPER_COLOURS)
    upper2 = _pick(rng, UPPER_COLOURS)
    while np.abs(np.subtract(upper, upper2)).sum() < 120:
        upper2 = _pick(rng, UPPER_COLOURS)
    return Identity(
        skin=_pick(rng, SKIN_COLOURS, 6), hair=_pick(rng, HAIR_COLOURS, 8),
        long_hair=bool(rng.random() < 0.35), upper=upper, upper2=upper2,
        pattern=PATTERNS[rng.integers(len(PATTERNS))], logo=LOGO_SHAPES[rng.integers(len(LOGO_SHAPES))],
        stripe=float(rng.uniform(0.035, 0.07)), long_sleeves=bool(rng.random() < 0.55),
        lower=_pick(rng, LOWER_COLOURS), lower_type=LOWER_TYPES[rng.integers(len(LOWER_TYPES))],
        shoes=_pick(rng, SHOE_COLOURS, 6), hat=_maybe(rng, 0.2, UPPER_COLOURS),
        backpack=_maybe(rng, 0.3, LOWER_COLOURS + UPPER_COLOURS[:6]), bag=_maybe(rng, 0.25, LOWER_COLOURS),
        bag_side=int(rng.choice((-1, 1))), build=float(rng.uniform(0.82, 1.2)),
        head=float(rng.uniform(0.9, 1.12)), legs=float(rng.uniform(0.45, 0.53)),
    )


def _differs(a, b):
    """Whether two attribute values look different (colours: clearly different shades)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return np.abs(np.subtract(a, b)).sum() > 90
    if isinstance(a, float):
        return abs(a - b) > 0.1 * max(a, b)
    return a != b


# Attribute groups that a look-alike redraws together; the first one must visibly change.
_MUTABLE = (('upper', 'upper2'), ('pattern', 'logo', 'stripe'), ('lower',), ('lower_type',),
            ('long_sleeves',), ('hair', 'long_hair'), ('hat',), ('backpack',), ('bag', 'bag_side'),
            ('build', 'legs'))


def mutate_identity(ident, rng):
    """A look-alike of ``ident``: one or two attribute groups visibly redrawn."""
    changes = {}
    for index in rng.choice(len(_MUTABLE), size=int(rng.integers(1, 3)), replace=False):
        group = _MUTABLE[index]
        donor = sample_identity(rng)
        while not _differs(getattr(donor, group[0]), getattr(ident, group[0])):
            donor = sample_identity(rng)
        changes.update({key: getattr(donor, key) for key in group})
    return replace(ident, **changes)


def sample_population(rng, n, lookalike_rate=1 / 3):
    """``n`` identities; about ``lookalike_rate`` of them are mutations of an earlier one."""
    people = []
    for _ in range(n):
        if people and rng.random() < lookalike_rate:
            people.append(mutate_identity(people[rng.integers(len(people))], rng))
        else:
            people.append(sample_identity(rng))
    return people


def _pt(x, y):
    return int(round(x)), int(round(y))


def _line(img, p, q, colour, width):
    cv2.line(img, _pt(*p), _pt(*q), colour, max(1, int(round(width))), cv2.LINE_AA)


def _ellipse(img, centre, axes, colour, start=0, end=360):
    axes = _pt(max(axes[0], 1), max(axes[1], 1))
    cv2.ellipse(img, _pt(*centre), axes, 0, start, end, colour, -1, cv2.LINE_AA)


def _poly(img, points, colour):
    cv2.fillPoly(img, [np.round(np.asarray(points)).astype(np.int32)], colour, cv2.LINE_AA)


def _garment(img, points, ident, origin, ph):
    """Fill polygon ``points`` with the upper garment's colour and pattern, anchored at ``origin``."""
    if ident.pattern not in ('hstripes', 'vstripes', 'checks'):
        _poly(img, points, ident.upper)
        return
    mask = np.zeros(img.shape[:2], np.uint8)
    _poly(mask, points, 1)
    ys, xs = np.nonzero(mask)
    period = max(2.0, ident.stripe * ph)
    rows = ((ys - origin[1]) // period).astype(int) % 2
    cols = ((xs - origin[0] + 1000 * period) // period).astype(int) % 2
    band = {'hstripes': rows, 'vstripes': cols, 'checks': rows ^ cols}[ident.pattern]
    img[ys, xs] = np.where(band[:, None] == 1, ident.upper2, ident.upper)


def _logo(img, ident, centre, size):
    """Chest logo (seen from the front only)."""
    x, y = centre
    if ident.logo == 'circle':
        _ellipse(img, centre, (size, size), ident.upper2)
    elif ident.logo == 'square':
        _poly(img, [(x - size, y - size), (x + size, y - size), (x + size, y + size), (x - size, y + size)],
              ident.upper2)
    else:
        _poly(img, [(x, y - size), (x + size, y + size), (x - size, y + size)], ident.upper2)


def draw_person(img, ident, view, cx, feet, ph, phase):
    """Draw ``ident`` seen from ``view``, feet at (cx, feet), ``ph`` pixels tall, at walking ``phase``."""
    side = view in ('left', 'right')
    facing = {'left': -1, 'right': 1}.get(view, 0)
    rh = 0.062 * ph * ident.head
    head_y = feet - ph + rh
    shoulder_y = head_y + rh + 0.025 * ph
    hip_y = feet - ident.legs * ph
    sw = 0.12 * ph * ident.build * (0.6 if side else 1.0)  # half shoulder width
    hw = 0.85 * sw  # half hip width
    aw, lw = 0.045 * ph * ident.build, 0.052 * ph * ident.build  # arm and leg widths
    stride = 0.13 * ph * np.sin(phase) if side else 0.015 * ph * np.sin(phase)

    # Things behind the body.
    if ident.backpack is not None and side:
        near, far = cx - facing * 0.6 * sw, cx - facing * (sw + 0.09 * ph)
        _poly(img, [(near, shoulder_y + 0.03 * ph), (far, shoulder_y + 0.05 * ph), (far, hip_y - 0.03 * ph),
                    (near, hip_y - 0.03 * ph)], ident.backpack)
    if ident.long_hair and view != 'back':
        _poly(img, [(cx - 1.05 * rh - facing * 0.4 * rh, head_y), (cx + 1.05 * rh - facing * 0.9 * rh, head_y),
                    (cx + 1.0 * rh - facing * 0.9 * rh, shoulder_y + 0.08 * ph),
                    (cx - 1.0 * rh - facing * 0.4 * rh, shoulder_y + 0.08 * ph)], ident.hair)

    # Legs, lower garment and shoes.
    if side:
        hips, feet_x = (cx, cx), (cx + stride, cx - stride)
    else:
        hips, feet_x = (cx - 0.5 * hw, cx + 0.5 * hw), (cx - 0.55 * hw - stride, cx + 0.55 * hw + stride)
    leg_colour = ident.lower if ident.lower_type == 'trousers' else ident.skin
    for hx, fx in zip(hips, feet_x):
        _line(img, (hx, hip_y), (fx, feet - 0.02 * ph), leg_colour, lw)
        if ident.lower_type == 'shorts':
            knee = (hx + 0.45 * (fx - hx), hip_y + 0.45 * (feet - hip_y))
            _line(img, (hx, hip_y), knee, ident.lower, lw * 1.15)
        _ellipse(img, (fx + facing * 0.02 * ph, feet - 0.015 * ph), ((0.05 if side else 0.035) * ph, 0.02 * ph),
                 ident.shoes)
    if ident.lower_type == 'skirt':
        flare = hw + 0.05 * ph + abs(stride) * 0.5
        skirt_y = hip_y + 0.5 * (feet - hip_y)
        _poly(img, [(cx - hw, hip_y - 0.01 * ph), (cx + hw, hip_y - 0.01 * ph), (cx + flare, skirt_y),
                    (cx - flare, skirt_y)], ident.lower)
    else:
        _poly(img, [(cx - hw, hip_y - 0.01 * ph), (cx + hw, hip_y - 0.01 * ph), (cx + hw, hip_y + 0.04 * ph),
                    (cx - hw, hip_y + 0.04 * ph)], ident.lower)

    # Arms: the far arm of a side view is hidden behind the torso.
    def arm(shoulder_x, hand_x):
        shoulder, hand = (shoulder_x, shoulder_y + 0.3 * aw), (hand_x, hip_y + 0.04 * ph)
        _line(img, shoulder, hand, ident.upper, aw)
        if not ident.long_sleeves:
            elbow = (shoulder[0] + 0.35 * (hand[0] - shoulder[0]), shoulder[1] + 0.35 * (hand[1] - shoulder[1]))
            _line(img, elbow, hand, ident.skin, aw * 0.85)
        _ellipse(img, hand, (0.45 * aw, 0.5 * aw), ident.skin)

    if side:
        arm(cx, cx + 0.8 * stride)
    hem_y = hip_y + 0.03 * ph
    _garment(img, [(cx - sw, shoulder_y), (cx + sw, shoulder_y), (cx + hw, hem_y), (cx - hw, hem_y)], ident,
             (cx, shoulder_y), ph)
    for sx in (-1, 1):
        _ellipse(img, (cx + sx * (sw - 0.4 * aw), shoulder_y + 0.45 * aw), (0.55 * aw, 0.5 * aw), ident.upper)
    if view == 'front' and ident.pattern == 'logo':
        _logo(img, ident, (cx + 0.3 * sw, shoulder_y + 0.09 * ph), 0.03 * ph)
    if ident.backpack is not None and view == 'back':
        _poly(img, [(cx - 0.75 * sw, shoulder_y + 0.03 * ph), (cx + 0.75 * sw, shoulder_y + 0.03 * ph),
                    (cx + 0.7 * sw, hip_y - 0.02 * ph), (cx - 0.7 * sw, hip_y - 0.02 * ph)], ident.backpack)
        _line(img, (cx - 0.55 * sw, hip_y - 0.09 * ph), (cx + 0.55 * sw, hip_y - 0.09 * ph),
              _shade(ident.backpack, 0.6), 0.012 * ph)
    if ident.backpack is not None and view == 'front':
        for sx in (-1, 1):
            _line(img, (cx + sx * 0.55 * sw, shoulder_y), (cx + sx * 0.6 * sw, shoulder_y + 0.17 * ph),
                  ident.backpack, 0.022 * ph)
    if side:
        arm(cx, cx - 0.8 * stride)
    else:
        for sx in (-1, 1):
            arm(cx + sx * (sw - 0.4 * aw), cx + sx * (sw + 0.015 * ph))

    # Shoulder bag: on the person's right or left, which flips between front and back views.
    if ident.bag is not None:
        offset = {'front': -1, 'back': 1}.get(view, 0) * ident.bag_side * (sw + 0.035 * ph) + facing * 0.02 * ph
        x, top, bottom, half = cx + offset, hip_y - 0.03 * ph, hip_y + 0.07 * ph, 0.05 * ph
        _line(img, (cx - np.sign(offset) * 0.6 * sw, shoulder_y), (x, top), ident.bag, 0.014 * ph)
        _poly(img, [(x - half, top), (x + half, top), (x + 1.1 * half, bottom), (x - 1.1 * half, bottom)],
              ident.bag)

    # Head, hair and hat.
    _line(img, (cx, head_y + 0.5 * rh), (cx, shoulder_y + 0.1 * aw), ident.skin, 0.7 * rh)
    if view == 'back':
        _ellipse(img, (cx, head_y), (0.92 * rh, rh), ident.hair)
        if ident.long_hair:
            ends_y = shoulder_y + 0.09 * ph
            _poly(img, [(cx - 0.95 * rh, head_y), (cx + 0.95 * rh, head_y), (cx + 0.9 * rh, ends_y),
                        (cx - 0.9 * rh, ends_y)], ident.hair)
    else:
        _ellipse(img, (cx - facing * 0.2 * rh, head_y - 0.05 * rh), (0.92 * rh, rh), ident.hair)
        face_axes = ((0.6 if side else 0.78) * rh, 0.82 * rh)
        _ellipse(img, (cx + facing * 0.25 * rh, head_y + 0.15 * rh), face_axes, ident.skin)
    if ident.hat is not None:
        _ellipse(img, (cx, head_y - 0.2 * rh), (rh, 0.85 * rh), ident.hat, 180, 360)
        brim_y = head_y - 0.2 * rh
        if view == 'front':
            _line(img, (cx - 1.15 * rh, brim_y), (cx + 1.15 * rh, brim_y), ident.hat, 0.22 * rh)
        elif side:
            _line(img, (cx, brim_y), (cx + facing * 1.4 * rh, brim_y), ident.hat, 0.22 * rh)


# ----------------------------------------------------------------------------
# Cameras and scenes
# ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Camera:
    """One camera: its scene and how it sees people."""
    scene: np.ndarray  # RGB, canvas height x 3 canvas widths
    gains: np.ndarray  # per-channel colour cast
    brightness: float
    gamma: float
    view_probs: np.ndarray  # over VIEWS
    scale: float  # typical person height / box height
    resolution: float  # < 1: the camera is low resolution
    blur: float  # Gaussian sigma in stored pixels
    noise: float  # sensor noise sigma in grey levels
    occlusion: float  # probability that something covers part of the person


def make_scene(rng, h, w):
    """A textured wall-and-floor background with fixed furniture (doors, windows, poles)."""
    wall, floor = _pick(rng, LOWER_COLOURS + UPPER_COLOURS[:4], 20), _pick(rng, LOWER_COLOURS[:4], 20)
    horizon = int(rng.uniform(0.45, 0.75) * h)
    img = np.empty((h, w, 3), np.uint8)
    img[:horizon], img[horizon:] = wall, floor
    texture = rng.choice(('bricks', 'panels', 'plain'))
    step = int(rng.integers(h // 16, h // 7))
    if texture == 'bricks':
        for row, y in enumerate(range(0, horizon, step)):
            cv2.line(img, (0, y), (w, y), _shade(wall, 0.75), 1)
            for x in range((row % 2) * step, w, 2 * step):
                cv2.line(img, (x, y), (x, y + step), _shade(wall, 0.75), 1)
    elif texture == 'panels':
        for x in range(0, w, 3 * step):
            cv2.rectangle(img, (x, 0), (x + 2 * step, horizon), _shade(wall, 1.2), -1)
    for y in range(horizon, h, step):  # floor tiles
        cv2.line(img, (0, y), (w, y), _shade(floor, 0.75), 1)
    for _ in range(int(rng.integers(2, 6))):  # doors, windows, poles
        x, bw = int(rng.integers(0, w)), int(rng.integers(w // 40 + 2, w // 8))
        y0 = int(rng.integers(0, horizon // 2))
        cv2.rectangle(img, (x, y0), (x + bw, horizon), _pick(rng, UPPER_COLOURS + LOWER_COLOURS, 20), -1)
    shading = cv2.resize(rng.uniform(0.75, 1.2, (4, 12)), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img * shading[..., None] + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def make_camera(rng, h, w):
    """Draw one camera's scene and imaging conditions for canvases of h x w pixels."""
    return Camera(
        scene=make_scene(rng, h, 3 * w), gains=rng.uniform(0.82, 1.18, 3),
        brightness=float(rng.uniform(0.7, 1.25)), gamma=float(rng.uniform(0.8, 1.25)),
        view_probs=rng.dirichlet(np.full(4, 0.7)), scale=float(rng.uniform(0.78, 0.92)),
        resolution=float(rng.uniform(0.45, 1.0)), blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(2, 8)), occlusion=float(rng.uniform(0.1, 0.3)),
    )


def add_clutter(img, rng):
    """A few random objects in the background."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = _pt(rng.uniform(0.05, 0.3) * w, rng.uniform(0.03, 0.15) * h)
        colour = _pick(rng, UPPER_COLOURS + LOWER_COLOURS, 25)
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + size[0], y + size[1]), colour, -1)
        else:
            cv2.ellipse(img, (x, y), size, 0, 0, 360, colour, -1, cv2.LINE_AA)


def add_occluder(img, rng, camera, person_scale):
    """Cover part of the box: an object rising from the bottom, a pole, or a passer-by in front."""
    h, w = img.shape[:2]
    kind = rng.choice(('object', 'pole', 'person'))
    colour = _pick(rng, UPPER_COLOURS + LOWER_COLOURS, 25)
    if kind == 'object':
        top, x0 = int(h * rng.uniform(0.6, 0.85)), int(w * rng.uniform(-0.5, 0.5))
        cv2.rectangle(img, (x0, top), (x0 + int(w * rng.uniform(0.5, 1.0)), h), colour, -1)
        cv2.line(img, (0, top + 3), (w, top + 3), _shade(colour, 0.7), 2)
    elif kind == 'pole':
        x0 = int(w * rng.uniform(0.0, 0.9))
        cv2.rectangle(img, (x0, 0), (x0 + int(w * rng.uniform(0.08, 0.2)), h), colour, -1)
    else:
        draw_passerby(img, rng, camera, person_scale, near=True)


def draw_passerby(img, rng, camera, person_scale, near):
    """Another random person at the edge of the box: in front (``near``) or behind."""
    h, w = img.shape[:2]
    scale = person_scale * (rng.uniform(1.0, 1.2) if near else rng.uniform(0.7, 0.95))
    cx = w * (rng.uniform(-0.25, 0.1) if rng.random() < 0.5 else rng.uniform(0.9, 1.25))
    draw_person(img, sample_identity(rng), VIEWS[rng.choice(4, p=camera.view_probs)],
                cx, h * rng.uniform(0.9, 1.05), scale * h, rng.uniform(0, 2 * np.pi))


def apply_camera(img, camera, rng):
    """Image a stored-size RGB picture through ``camera``: resolution, blur, colour cast, light, noise."""
    h, w = img.shape[:2]
    out = img.astype(np.float32) / 255.0
    if camera.resolution < 0.95:
        small = (max(4, int(w * camera.resolution)), max(8, int(h * camera.resolution)))
        out = cv2.resize(out, small, interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    sigma = camera.blur * rng.uniform(0.5, 1.5) * h / 128
    if sigma > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if rng.random() < 0.15:  # motion blur
        k = int(rng.integers(3, 6))
        out = cv2.filter2D(out, -1, np.full((1, k), 1.0 / k, np.float32))
    jitter, top_light = rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.15)  # top_light: vertical light gradient
    light = camera.brightness * jitter * np.linspace(top_light, 1.0, h, dtype=np.float32)
    out = np.power(out, camera.gamma) * (camera.gains.astype(np.float32) * light[:, None, None])
    out = out * 255.0 + rng.normal(0, camera.noise, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Shots: one image each
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shot:
    """One image to render: who (None: nobody), from where, and how the detector boxed it."""
    subset: str
    filename: str
    camera: int  # index into the camera list
    identity: Identity
    view: str
    box: str  # 'tight' (a good detection), 'loose' (distractor) or 'fragment' (junk)
    seed: int


def render_shot(shot, camera, height, width):
    """Render ``shot`` as a stored-size RGB uint8 image."""
    rng = np.random.default_rng(shot.seed)
    h, w = height * SUPERSAMPLE, width * SUPERSAMPLE
    x0 = int(rng.integers(0, camera.scene.shape[1] - w + 1))
    img = np.ascontiguousarray(camera.scene[:, x0:x0 + w])
    add_clutter(img, rng)
    scale = camera.scale * rng.uniform(0.93, 1.07)
    if rng.random() < 0.2:
        draw_passerby(img, rng, camera, scale, near=False)
    if shot.identity is not None:
        cx, feet, ph = w * (0.5 + rng.normal(0, 0.05)), h * rng.uniform(0.94, 1.01), scale * h
        if shot.box == 'loose':
            cx, feet = cx + w * rng.normal(0, 0.2), feet + h * rng.uniform(-0.1, 0.3)
            ph *= rng.uniform(0.6, 1.3)
        elif shot.box == 'fragment':
            cx, feet, ph = w * rng.uniform(0, 1), h * rng.uniform(0.5, 2.5), h * rng.uniform(1.5, 3.0)
        draw_person(img, shot.identity, shot.view, cx, feet, ph, rng.uniform(0, 2 * np.pi))
    if rng.random() < camera.occlusion:
        add_occluder(img, rng, camera, scale)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return apply_camera(img, camera, rng)


def _filename(pid, cam, seq, frame, bbox):
    """Market-1501 naming: PPPP_cCsS_FFFFFF_BB.jpg (junk: -1_c...)."""
    person = '-1' if pid < 0 else '{:04d}'.format(pid)
    return '{}_c{}s{}_{:06d}_{:02d}.jpg'.format(person, cam + 1, seq, frame, bbox)


def _tracklet_shots(rng, spec, cameras, pid, ident, subset):
    """All shots of one identity: per camera one tracklet (one walking direction, increasing frames)."""
    lo, hi = spec['cams_per_id']
    cams = rng.choice(spec['num_cams'], size=int(rng.integers(lo, hi + 1)), replace=False)
    shots = []
    for k, cam in enumerate(cams):
        n = int(rng.integers(spec['images_per_id_per_cam'][0], spec['images_per_id_per_cam'][1] + 1))
        query_index = int(rng.integers(n + 1)) if subset == 'gallery' and k < spec['query_per_id'] else -1
        view = VIEWS[rng.choice(4, p=cameras[cam].view_probs)]
        seq = int(rng.integers(1, 7))
        frames = int(rng.integers(1, 900000)) + np.cumsum(rng.integers(4, 30, size=n + 1))
        for i in range(n + (query_index >= 0)):
            name = _filename(pid, cam, seq, int(frames[i]), int(rng.integers(1, 9)))
            shots.append(Shot('query' if i == query_index else subset, name, int(cam), ident, view, 'tight',
                              int(rng.integers(2**63))))
    return shots


def _background_shots(rng, spec, pid, count):
    """Distractors (pid 0: other people, loose boxes, empty boxes) or junk (pid -1: body fragments)."""
    shots = []
    for i in range(count):
        cam = int(rng.integers(spec['num_cams']))
        ident = sample_identity(rng) if pid < 0 or rng.random() < 0.75 else None
        frame = 10 * i + int(rng.integers(10))  # unique per image
        name = _filename(pid, cam, int(rng.integers(1, 7)), frame, int(rng.integers(1, 9)))
        shots.append(Shot('gallery', name, cam, ident, VIEWS[rng.integers(4)],
                          'fragment' if pid < 0 else 'loose', int(rng.integers(2**63))))
    return shots


def plan(spec):
    """Return (cameras, shots) describing every image of the dataset ``spec`` (a validated spec)."""
    rng = np.random.default_rng(spec['seed'])
    h, w = spec['height'] * SUPERSAMPLE, spec['width'] * SUPERSAMPLE
    cameras = [make_camera(rng, h, w) for _ in range(spec['num_cams'])]
    n_train, n_test = spec['num_train_ids'], spec['num_test_ids']
    pids = rng.permutation(np.arange(1, n_train + n_test + 1))
    shots = []
    for subset, subset_pids in (('train', pids[:n_train]), ('gallery', pids[n_train:])):
        for pid, ident in zip(sorted(subset_pids), sample_population(rng, len(subset_pids))):
            shots += _tracklet_shots(rng, spec, cameras, int(pid), ident, subset)
    shots += _background_shots(rng, spec, 0, spec['num_distractors'])
    shots += _background_shots(rng, spec, -1, spec['num_junk'])
    return cameras, shots


# ----------------------------------------------------------------------------
# Generation on disk
# ----------------------------------------------------------------------------

def _spec_record(spec):
    return {'generator_version': GENERATOR_VERSION, 'spec': spec}


def stored_spec(dataset_dir):
    """The spec of the complete dataset in ``dataset_dir`` made by this generator version, or None."""
    try:
        with open(osp.join(dataset_dir, 'spec.json')) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored.get('spec') if stored.get('generator_version') == GENERATOR_VERSION else None


def is_generated(dataset_dir, spec):
    """Whether ``dataset_dir`` holds a complete dataset generated from ``spec``."""
    return stored_spec(dataset_dir) == _spec_record(spec)['spec']


def _stats(shots):
    """Image and identity counts per folder, distractors and junk counted apart."""
    stats = {}
    for subset in SUBSET_DIRS:
        mine = [s for s in shots if s.subset == subset]
        pids = {int(s.filename.split('_')[0]) for s in mine}
        stats[subset] = {'images': len(mine), 'ids': len(pids - {0, -1})}
    stats['distractors'] = sum(s.filename.startswith('0000_') for s in shots)
    stats['junk'] = sum(s.filename.startswith('-1_') for s in shots)
    return stats


def generate(dataset_dir, spec):
    """(Re)generate the dataset ``spec`` into ``dataset_dir``, atomically; return its statistics.

    Images go to a temporary sibling folder that replaces ``dataset_dir`` only once it is
    complete (``spec.json`` written last), so an interrupted run never leaves a dataset
    that looks complete.
    """
    spec = validate_spec(spec)
    start = time.time()
    parent = osp.dirname(osp.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.{}-tmp-'.format(osp.basename(dataset_dir)), dir=parent)
    try:
        cameras, shots = plan(spec)
        for folder in SUBSET_DIRS.values():
            os.makedirs(osp.join(tmp, folder))
        for shot in shots:
            img = render_shot(shot, cameras[shot.camera], spec['height'], spec['width'])
            path = osp.join(tmp, SUBSET_DIRS[shot.subset], shot.filename)
            if not cv2.imwrite(path, img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError('could not write ' + path)
        stats = _stats(shots)
        with open(osp.join(tmp, 'spec.json'), 'w') as f:
            json.dump({**_spec_record(spec), 'stats': stats}, f, indent=2)
        if osp.exists(dataset_dir):
            old = tempfile.mkdtemp(prefix='.{}-old-'.format(osp.basename(dataset_dir)), dir=parent)
            os.rename(dataset_dir, osp.join(old, 'data'))
            os.rename(tmp, dataset_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print('=> SynthReID: generated {} images (train {}, query {}, gallery {} incl. {} distractors and {} junk) '
          'in "{}" in {:.1f}s'.format(len(shots), stats['train']['images'], stats['query']['images'],
                                      stats['gallery']['images'], stats['distractors'], stats['junk'],
                                      dataset_dir, time.time() - start))
    return stats


def ensure_generated(dataset_dir, spec):
    """Generate ``dataset_dir`` unless it already holds ``spec``; return whether it generated.

    Under torchrun one process writes while the others wait: global rank 0 first,
    then local rank 0 of any node that still lacks it (no shared filesystem).
    """
    generated = False
    for writer in (distributed.is_main(), distributed.get_local_rank() == 0):
        if writer and not is_generated(dataset_dir, spec):
            generate(dataset_dir, spec)
            generated = True
        distributed.barrier()
    return generated


# ----------------------------------------------------------------------------
# torchreid dataset
# ----------------------------------------------------------------------------

class SynthReID(ImageDataset):
    """Procedurally generated person re-id dataset in Market-1501's layout.

    With ``spec`` (DEFAULT_SPEC updated with it) that dataset is generated unless on disk;
    without (as the host builds it), the dataset on disk is read (see :func:`prepare`), and
    DEFAULT_SPEC generated where there is none. ``stats`` holds image and identity counts
    per folder, including the pid 0 distractors and pid -1 junk in the gallery folder.
    """
    _junk_pids = [0, -1]
    dataset_dir = NAME

    def __init__(self, root='', spec=None, **kwargs):
        self.root = osp.abspath(osp.expanduser(root))
        self.dataset_dir = osp.join(self.root, self.dataset_dir)
        if spec is None:
            spec = stored_spec(self.dataset_dir) or DEFAULT_SPEC
        self.spec = validate_spec({**DEFAULT_SPEC, **spec})
        ensure_generated(self.dataset_dir, self.spec)
        with open(osp.join(self.dataset_dir, 'spec.json')) as f:
            self.stats = json.load(f)['stats']

        self.train_dir = osp.join(self.dataset_dir, SUBSET_DIRS['train'])
        self.query_dir = osp.join(self.dataset_dir, SUBSET_DIRS['query'])
        self.gallery_dir = osp.join(self.dataset_dir, SUBSET_DIRS['gallery'])
        self.check_before_run([self.dataset_dir, self.train_dir, self.query_dir, self.gallery_dir])

        train = self.process_dir(self.train_dir, relabel=True)
        query = self.process_dir(self.query_dir, relabel=False)
        gallery = self.process_dir(self.gallery_dir, relabel=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path, relabel=False):
        """Market1501's parser (junk dropped, distractors kept), in a stable order and relabelling."""
        data = sorted(Market1501.process_dir(self, dir_path, relabel=False))
        if relabel:
            pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in data}))}
            data = [(path, pid2label[pid], camid) for path, pid, camid in data]
        return data

    def show_summary(self):
        super().show_summary()
        print('  gallery includes {} distractors (pid 0); {} junk images (pid -1) ignored'.format(
            self.stats['distractors'], self.stats['junk']))


def register():
    """Register :class:`SynthReID` with torchreid as ``'synthreid'``; calling it again is a no-op."""
    # torchreid has no lookup API and raises on duplicate names, so look at its table.
    if vars(torchreid_datasets)['__image_datasets'].get(NAME) is not SynthReID:
        register_image_dataset(NAME, SynthReID)
