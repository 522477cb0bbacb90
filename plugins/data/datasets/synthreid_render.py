"""How SynthReID draws its images: people (identities and their look-alikes), cameras and
scenes, and the plan of shots (one image each) for a spec. Deterministic from the spec's seed."""
from dataclasses import dataclass, replace

import cv2
import numpy as np

SUPERSAMPLE = 2  # people are drawn at this multiple of the stored size, then downsampled
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
