"""The scene world: procedural outdoor scenes with per-pixel labels and named attributes.

Every scene is rendered from a seed, deterministically, at any resolution. It stands in for the
photo datasets, segmenters and attribute classifiers that the papers use (see DESIGN.md).
Coordinates are fractions of the image: x in [0, 1) left to right, y in [0, 1) top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

CATEGORIES = (
    "beach",
    "lake",
    "snowy_mountains",
    "desert",
    "forest",
    "field",
    "city_street",
    "night_city",
)

CLASSES = (
    "sky",
    "cloud",
    "sun",  # sun or moon
    "mountain",
    "snow",
    "water",
    "sand",
    "grass",
    "tree",
    "building",
    "road",
)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

# attribute name -> its abstraction level in HiGAN's hierarchy (layout, objects, attribute, color)
ATTRIBUTES = {
    "horizon": "layout",  # height of the horizon, 0 = top, 1 = bottom
    "mountain_height": "layout",  # how far mountains rise above the horizon (0 = none)
    "tree_count": "objects",
    "building_count": "objects",
    "time_of_day": "attribute",  # 0 = deep night, ~0.3 = sunset, 1 = noon
    "cloudiness": "attribute",
    "warmth": "color",  # 0 = cool/blue cast, 1 = warm/orange cast
    "colorfulness": "color",  # saturation scale
}

RENDITIONS = ("photo", "line_drawing", "grayscale", "painting")

# Seeds at or above this offset are held out from training (evaluation only).
HELDOUT_SEED_OFFSET = 1_000_000_000

_BASE_COLOR = {
    "cloud": (0.95, 0.95, 0.97),
    "mountain": (0.42, 0.44, 0.50),
    "rock": (0.62, 0.42, 0.30),
    "snow": (0.93, 0.95, 1.00),
    "water": (0.15, 0.35, 0.60),
    "sand": (0.86, 0.76, 0.52),
    "grass": (0.30, 0.55, 0.20),
    "tree": (0.12, 0.38, 0.14),
    "trunk": (0.35, 0.22, 0.12),
    "building": (0.55, 0.52, 0.50),
    "road": (0.33, 0.33, 0.35),
}


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # uint8 [H, W], indices into CLASSES
    category: int  # index into CATEGORIES
    attributes: dict[str, float] = field(default_factory=dict)
    seed: int = 0


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions, each [H, W] float32 (read-only, shared)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=32)
def _interp_index(cells: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    frac = frac * frac * (3 - 2 * frac)  # smoothstep: no visible grid lines
    return lo, lo + 1, frac.astype(np.float32)


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1], [H, W]: a random (cells+1)^2 lattice, smoothly interpolated."""
    lattice = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    lo, hi, f = _interp_index(cells, size)
    rows = lattice[lo] * (1 - f)[:, None] + lattice[hi] * f[:, None]  # [H, cells+1]
    return rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]


def noise_1d(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    lattice = rng.uniform(-1, 1, cells + 1).astype(np.float32)
    lo, hi, f = _interp_index(cells, size)
    return lattice[lo] * (1 - f) + lattice[hi] * f


class _Canvas:
    """Colour image + label map painted back to front (later paint occludes earlier)."""

    def __init__(self, size: int):
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.labels = np.zeros((size, size), np.uint8)
        self.emissive = np.zeros((size, size), bool)  # pixels that ignore scene lighting

    def paint(self, mask: np.ndarray, label: str, color, texture=None, amount=0.0, emissive=False, window=None):
        """Paint `color` ([3] or [h, w, 3]) where mask; texture in [-1, 1] modulates brightness.

        `window` = (rows, cols) slices: mask, colour and texture then cover only that window,
        which keeps small objects cheap."""
        window = window or (slice(None), slice(None))
        color = np.asarray(color, np.float32)
        if texture is not None and amount:
            color = color * (1.0 + amount * texture[window])[..., None]
        np.copyto(self.rgb[window], color, where=mask[..., None])
        np.copyto(self.labels[window], CLASS_INDEX[label], where=mask)
        np.copyto(self.emissive[window], emissive, where=mask)


def _window(size: int, x0: float, x1: float, y0: float, y1: float):
    """Slices of the pixel rows/cols covering the box [x0, x1) x [y0, y1) (fractions)."""
    c0, c1 = max(int(x0 * size) - 1, 0), min(int(x1 * size) + 2, size)
    r0, r1 = max(int(y0 * size) - 1, 0), min(int(y1 * size) + 2, size)
    return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sky_colors(t: float) -> tuple[np.ndarray, np.ndarray]:
    """Zenith and horizon colours for a time of day (0 night, 0.3 sunset, 1 noon)."""
    night = np.array([[0.02, 0.03, 0.10], [0.08, 0.10, 0.22]], np.float32)
    sunset = np.array([[0.25, 0.25, 0.55], [1.00, 0.55, 0.30]], np.float32)
    day = np.array([[0.22, 0.45, 0.85], [0.70, 0.82, 0.96]], np.float32)
    if t < 0.3:
        c = night + (sunset - night) * _smoothstep(t / 0.3)
    else:
        c = sunset + (day - sunset) * _smoothstep((t - 0.3) / 0.4)
    return c[0], c[1]


# Per-category parameter ranges: (low, high) for uniform draws.
_CATEGORY_SETUP = {
    "beach": dict(horizon=(0.35, 0.6), mountains=0.3, trees=(0, 3), buildings=(0, 0), time=(0.25, 1.0)),
    "lake": dict(horizon=(0.35, 0.6), mountains=0.8, trees=(2, 8), buildings=(0, 0), time=(0.25, 1.0)),
    "snowy_mountains": dict(horizon=(0.5, 0.75), mountains=1.0, trees=(0, 6), buildings=(0, 0), time=(0.3, 1.0)),
    "desert": dict(horizon=(0.4, 0.65), mountains=0.5, trees=(0, 0), buildings=(0, 0), time=(0.3, 1.0)),
    "forest": dict(horizon=(0.45, 0.7), mountains=0.3, trees=(8, 18), buildings=(0, 0), time=(0.3, 1.0)),
    "field": dict(horizon=(0.3, 0.55), mountains=0.5, trees=(0, 4), buildings=(0, 2), time=(0.25, 1.0)),
    "city_street": dict(horizon=(0.45, 0.65), mountains=0.0, trees=(0, 3), buildings=(4, 9), time=(0.35, 1.0)),
    "night_city": dict(horizon=(0.45, 0.65), mountains=0.0, trees=(0, 2), buildings=(4, 9), time=(0.0, 0.12)),
}


def _draw_sky(cv: _Canvas, rng, yy, xx, horizon: float, t: float, cloudiness: float, fine) -> dict:
    zenith, near = _sky_colors(t)
    g = np.clip(yy / max(horizon, 1e-3), 0, 1)[..., None]
    cv.rgb[:] = zenith + (near - zenith) * g  # the canvas starts as sky (label 0), emissive
    cv.emissive[:] = True
    if t < 0.2:  # stars
        stars = (rng.random(yy.shape) < 0.01) & (yy < horizon)
        cv.paint(stars, "sky", (0.9, 0.9, 0.8), emissive=True)
    # sun or moon
    sx, sy = rng.uniform(0.1, 0.9), horizon * rng.uniform(0.2, 0.8)
    r = rng.uniform(0.04, 0.08)
    w = _window(cv.size, sx - r, sx + r, sy - r, sy + r)
    disk = ((xx[w] - sx) ** 2 + (yy[w] - sy) ** 2 < r * r) & (yy[w] < horizon)
    sun_color = (1.0, 0.95, 0.7) if t > 0.45 else (1.0, 0.6, 0.3) if t > 0.2 else (0.9, 0.9, 0.85)
    cv.paint(disk, "sun", sun_color, emissive=True, window=w)
    # clouds: blobs whose edges are frayed by noise
    n_clouds = int(round(cloudiness * 6))
    for _ in range(n_clouds):
        cx, cy = rng.uniform(0, 1), horizon * rng.uniform(0.1, 0.85)
        rx, ry = rng.uniform(0.08, 0.22), rng.uniform(0.03, 0.07)
        w = _window(cv.size, cx - rx, cx + rx, cy - ry, cy + ry)
        d = ((xx[w] - cx) / rx) ** 2 + ((yy[w] - cy) / ry) ** 2
        blob = (d + 0.5 * fine[w] < 1.0) & (yy[w] < horizon)
        shade = 0.75 + 0.25 * np.clip((cy + ry - yy[w]) / (2 * ry), 0, 1)[..., None]
        tint = np.array(_BASE_COLOR["cloud"], np.float32) * (1 - 0.3 * cloudiness)
        if t < 0.45:  # lit from below at sunset
            tint = tint * np.array([1.0, 0.8, 0.7], np.float32)
        cv.paint(blob, "cloud", tint * shade, window=w)
    return {"sun_x": sx}


def _draw_mountains(cv: _Canvas, rng, yy, xx, horizon, height, snowline, rock: bool, coarse):
    size = cv.size
    for layer in range(2):  # far range first, paler
        h = height * (0.6 if layer == 0 else 1.0) * rng.uniform(0.7, 1.0)
        profile = 0.6 * noise_1d(rng, size, 3) + 0.3 * noise_1d(rng, size, 7) + 0.1 * noise_1d(rng, size, 16)
        ridge = horizon - h * (0.55 + 0.45 * profile)  # [W]
        m = (yy > ridge[None, :]) & (yy < horizon + 0.01)
        base = np.array(_BASE_COLOR["rock" if rock else "mountain"], np.float32)
        if layer == 0:
            base = base * 0.7 + 0.3 * np.array([0.7, 0.75, 0.85], np.float32)
        # shade: lit flank on one side of each peak
        slope = np.gradient(ridge)[None, :] * size
        shade = (1.0 + 0.25 * np.clip(slope, -1, 1) + 0.1 * coarse)[..., None]
        cv.paint(m, "mountain", base * shade)
        if snowline > 0:
            depth = h * snowline * (0.8 + 0.4 * coarse)
            snow = m & (yy < ridge[None, :] + depth)
            cv.paint(snow, "snow", np.array(_BASE_COLOR["snow"], np.float32) * shade)


def _draw_ground(cv: _Canvas, rng, yy, xx, horizon, category, fine, coarse, t, sun_x):
    below = yy >= horizon
    depth = np.clip((yy - horizon) / max(1 - horizon, 1e-3), 0, 1)  # 0 at horizon, 1 at bottom
    if category == "beach":
        shore = horizon + (1 - horizon) * (rng.uniform(0.3, 0.6) + 0.06 * noise_1d(rng, cv.size, 4))
        water = below & (yy < shore[None, :])
        _paint_water(cv, water, rng, yy, xx, horizon, t, sun_x, fine)
        sand = below & ~water
        cv.paint(sand, "sand", _BASE_COLOR["sand"], texture=fine, amount=0.08)
        foam = sand & (yy < shore[None, :] + 0.02)
        cv.paint(foam, "water", (0.9, 0.93, 0.95))
    elif category == "lake":
        far = horizon + (1 - horizon) * rng.uniform(0.05, 0.15)
        near = horizon + (1 - horizon) * (rng.uniform(0.65, 0.9) + 0.05 * noise_1d(rng, cv.size, 5))
        cv.paint(below & (yy < far), "grass", _BASE_COLOR["grass"], texture=coarse, amount=0.2)
        water = below & (yy >= far) & (yy < near[None, :])
        _paint_water(cv, water, rng, yy, xx, horizon, t, sun_x, fine)
        cv.paint(below & (yy >= near[None, :]), "grass", _BASE_COLOR["grass"], texture=fine, amount=0.2)
    elif category == "snowy_mountains":
        col = np.array(_BASE_COLOR["snow"], np.float32) * (0.85 + 0.15 * depth)[..., None]
        cv.paint(below, "snow", col, texture=coarse, amount=0.05)
    elif category == "desert":
        dunes = np.sin((xx * rng.uniform(4, 9) + yy * 12 + coarse * 1.5) * np.pi)
        col = np.array(_BASE_COLOR["sand"], np.float32) * np.array([1.02, 0.95, 0.85], np.float32)
        cv.paint(below, "sand", col * (1 + 0.12 * dunes)[..., None], texture=fine, amount=0.04)
    elif category in ("forest", "field"):
        grass = np.array(_BASE_COLOR["grass"], np.float32)
        if category == "field":  # crop rows converge at the horizon
            rows = np.sin((xx - 0.5) / np.maximum(depth, 0.05) * rng.uniform(20, 40))
            grass = grass * rng.uniform(0.9, 1.3, 3).astype(np.float32)
            col = grass * (1 + 0.12 * rows)[..., None]
        else:
            col = grass * 0.8 * np.ones((1, 1, 3), np.float32)
        cv.paint(below, "grass", col * (0.8 + 0.3 * depth)[..., None], texture=fine, amount=0.2)
        if category == "field" and rng.random() < 0.5:  # dirt track
            _paint_road(cv, rng, yy, xx, horizon, depth, width=rng.uniform(0.1, 0.25), color=(0.5, 0.4, 0.3))
    else:  # city: pavement everywhere, a road in the middle
        cv.paint(below, "road", (0.55, 0.54, 0.52), texture=fine, amount=0.05)
        _paint_road(cv, rng, yy, xx, horizon, depth, width=rng.uniform(0.5, 0.8), color=_BASE_COLOR["road"])
        lane = below & (np.abs(xx - 0.5) < 0.006 + 0.01 * depth) & (np.sin(depth * 25) > 0)
        cv.paint(lane, "road", (0.9, 0.85, 0.5))


def _paint_road(cv, rng, yy, xx, horizon, depth, width, color):
    centre = 0.5 + rng.uniform(-0.15, 0.15) * (1 - depth)
    road = (yy >= horizon) & (np.abs(xx - centre) < 0.01 + width * depth)
    cv.paint(road, "road", color)


def _paint_water(cv, mask, rng, yy, xx, horizon, t, sun_x, fine):
    zenith, near = _sky_colors(t)
    base = 0.55 * np.array(_BASE_COLOR["water"], np.float32) + 0.45 * near
    ripples = np.sin(yy * cv.size * rng.uniform(1.0, 2.0) + fine * 3)
    col = base * (1 + 0.08 * ripples)[..., None] * np.ones((1, 1, 3), np.float32)
    glint = np.exp(-(((xx - sun_x) / 0.04) ** 2)) * (ripples > 0.3)
    col = col + (0.5 * glint)[..., None] * np.array([1.0, 0.9, 0.7], np.float32)
    cv.paint(mask, "water", col)


def _draw_buildings(cv: _Canvas, rng, yy, xx, horizon, count, night: bool):
    if count == 0:
        return 0
    edges = np.sort(rng.uniform(0, 1, count + 1))
    edges[0], edges[-1] = rng.uniform(-0.1, 0.05), rng.uniform(0.95, 1.1)
    drawn = 0
    for i in range(count):
        x0, x1 = edges[i], edges[i + 1]
        if x1 - x0 < 0.04:
            x1 = x0 + 0.04
        top = horizon - rng.uniform(0.1, 0.45) * horizon
        bottom = horizon + rng.uniform(0.02, 0.08)
        w = _window(cv.size, x0, x1, top, bottom)
        y, x = yy[w], xx[w]
        box = (x >= x0) & (x < x1) & (y >= top) & (y < bottom)
        if not box.any():
            continue
        drawn += 1
        tone = rng.uniform(0.6, 1.3)
        wall = np.array(_BASE_COLOR["building"], np.float32) * tone * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        cv.paint(box, "building", np.clip(wall, 0, 1), window=w)
        # windows: a regular grid; lit at night (emissive), dark by day
        period = rng.uniform(0.035, 0.06)
        win = box & (np.mod(x - x0, period) < period * 0.5) & (np.mod(y - top, period) < period * 0.5)
        win &= y < bottom - 0.03
        if night:
            lit = win & (rng.random(y.shape) < 0.6)
            cv.paint(lit, "building", (1.0, 0.85, 0.45), emissive=True, window=w)
        else:
            cv.paint(win, "building", wall * 0.45, window=w)
    return drawn


def _draw_trees(cv: _Canvas, rng, yy, xx, horizon, count, pines: bool):
    bases = np.sort(rng.uniform(horizon + 0.02, 1.05, count))  # far (small) first
    for base in bases:
        depth = (base - horizon) / max(1 - horizon, 1e-3)
        h = (0.08 + 0.35 * depth) * rng.uniform(0.7, 1.3)
        cx = rng.uniform(0, 1)
        w = h * rng.uniform(0.25, 0.4)
        win = _window(cv.size, cx - w, cx + w, base - 1.1 * h, base)
        y, x = yy[win], xx[win]
        trunk = (np.abs(x - cx) < w * 0.12) & (y > base - h * 0.35) & (y < base)
        cv.paint(trunk, "tree", _BASE_COLOR["trunk"], window=win)
        col = np.array(_BASE_COLOR["tree"], np.float32) * rng.uniform(0.7, 1.3)
        if pines:
            top = base - h
            frac = (y - top) / (h * 0.8)
            crown = (frac > 0) & (frac < 1) & (np.abs(x - cx) < w * frac)
        else:
            cy = base - h * 0.65
            crown = ((x - cx) / w) ** 2 + ((y - cy) / (h * 0.4)) ** 2 < 1
        shade = (1.0 + 0.3 * np.clip((x - cx) / w, -1, 1))[..., None]  # light from one side
        cv.paint(crown, "tree", col * shade, window=win)


def _light(cv: _Canvas, t: float, warmth: float, colorfulness: float) -> np.ndarray:
    """Apply scene lighting, colour cast and saturation; returns float RGB in [0, 1]."""
    level = 0.18 + 0.82 * _smoothstep(t / 0.6)
    cast = np.array([1 + 0.3 * (warmth - 0.5), 1.0, 1 - 0.3 * (warmth - 0.5)], np.float32)
    rgb = cv.rgb * np.where(cv.emissive, np.float32(1), np.float32(level))[..., None] * cast
    gray = rgb.mean(-1, keepdims=True)
    rgb = gray + (rgb - gray) * (0.4 + 1.2 * colorfulness)
    return np.clip(rgb, 0, 1)


def render_scene(seed: int, size: int = 64, category: int | str | None = None, rendition: str = "photo") -> Scene:
    """Render one scene. Same (seed, size, category, rendition) -> identical pixels."""
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if rendition not in RENDITIONS:
        raise ValueError(f"rendition must be one of {RENDITIONS}, got {rendition!r}")
    rng = np.random.default_rng(seed)
    if category is None:
        cat = int(rng.integers(len(CATEGORIES)))
    else:
        cat = CATEGORIES.index(category) if isinstance(category, str) else int(category)
    name = CATEGORIES[cat]
    setup = _CATEGORY_SETUP[name]
    yy, xx = _grid(size)

    # 1. scene parameters (the attributes)
    horizon = float(rng.uniform(*setup["horizon"]))
    t = float(rng.uniform(*setup["time"]))
    cloudiness = float(rng.uniform(0, 1) ** 1.5)
    warmth = float(rng.uniform(0, 1))
    colorfulness = float(rng.uniform(0.3, 1))
    has_mountains = rng.random() < setup["mountains"]
    mountain_height = float(rng.uniform(0.3, 0.9) * horizon) if has_mountains else 0.0
    n_trees = int(rng.integers(setup["trees"][0], setup["trees"][1] + 1))
    n_buildings = int(rng.integers(setup["buildings"][0], setup["buildings"][1] + 1))
    fine = value_noise(rng, size, 12)
    coarse = value_noise(rng, size, 4)

    # 2. paint back to front
    cv = _Canvas(size)
    sky = _draw_sky(cv, rng, yy, xx, horizon, t, cloudiness, fine)
    if has_mountains:
        snowline = rng.uniform(0.5, 0.9) if name == "snowy_mountains" else rng.uniform(0, 0.3) * (name != "desert")
        _draw_mountains(cv, rng, yy, xx, horizon, mountain_height, snowline, rock=name == "desert", coarse=coarse)
    _draw_ground(cv, rng, yy, xx, horizon, name, fine, coarse, t, sky["sun_x"])
    n_buildings = _draw_buildings(cv, rng, yy, xx, horizon, n_buildings, night=name == "night_city")
    _draw_trees(cv, rng, yy, xx, horizon, n_trees, pines=name in ("snowy_mountains", "forest") and rng.random() < 0.7)
    rgb = _light(cv, t, warmth, colorfulness)

    attributes = {
        "horizon": horizon,
        "mountain_height": mountain_height,
        "tree_count": float(n_trees),
        "building_count": float(n_buildings),
        "time_of_day": t,
        "cloudiness": cloudiness,
        "warmth": warmth,
        "colorfulness": colorfulness,
    }
    image = to_rendition(rgb, cv.labels, rendition, seed)
    return Scene(image=image, labels=cv.labels, category=cat, attributes=attributes, seed=seed)


def to_rendition(rgb: np.ndarray, labels: np.ndarray, rendition: str, seed: int = 0) -> np.ndarray:
    """Turn a float photo [H, W, 3] in [0, 1] into uint8 in the given rendition."""
    if rendition == "photo":
        out = rgb
    elif rendition == "grayscale":
        lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        out = np.repeat(lum[..., None], 3, axis=-1)
    elif rendition == "line_drawing":
        lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        edge = np.zeros(labels.shape, bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        gy, gx = np.gradient(lum)
        edge |= np.hypot(gx, gy) > 0.12
        out = np.where(edge[..., None], 0.08, 0.97) * np.ones(3, np.float32)
    elif rendition == "painting":
        rng = np.random.default_rng(seed + 7)
        # flatten colours, smear along short diagonal strokes, add canvas grain
        q = np.round(rgb * 5) / 5
        smear = (q + np.roll(q, 1, 0) + np.roll(q, 1, 1) + np.roll(np.roll(q, 1, 0), 1, 1)) / 4
        grain = value_noise(rng, rgb.shape[0], max(rgb.shape[0] // 3, 2))[..., None]
        out = np.clip(smear * (1 + 0.12 * grain) + np.array([0.04, 0.02, -0.03], np.float32), 0, 1)
    else:
        raise ValueError(f"rendition must be one of {RENDITIONS}, got {rendition!r}")
    return (out * 255 + 0.5).astype(np.uint8)


def render_batch(seeds, size: int = 64, rendition: str = "photo"):
    """Render many scenes: images uint8 [N, H, W, 3], labels uint8 [N, H, W], categories int64 [N],
    attributes float32 [N, len(ATTRIBUTES)] in ATTRIBUTES order."""
    scenes = [render_scene(int(s), size, rendition=rendition) for s in seeds]
    images = np.stack([s.image for s in scenes])
    labels = np.stack([s.labels for s in scenes])
    cats = np.array([s.category for s in scenes], np.int64)
    attrs = np.array([[s.attributes[k] for k in ATTRIBUTES] for s in scenes], np.float32)
    return images, labels, cats, attrs
