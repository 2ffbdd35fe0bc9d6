"""The embedded synthetic dataset, written in the PASCAL VOC 2012 or the COCO 2014 layout.

Every image holds objects of the 20 VOC classes over a cluttered background (colour field, blobs,
lines, low-contrast texture, all in dull, low-chroma colours, so it never takes a class colour yet
still has edges a network must learn to ignore). Later objects are drawn over earlier ones and every
mask holds only the visible part. Images are not square: the long side is `size`, the short side
70-100% of it, so height/width mix-ups show up. Two styles of scene (`STYLES`):

basic (the default): 1 to 3 objects; a class is told by its whole object: its shape (one of 20
  families), its two colours and its texture pattern. Plain CAMs then cover whole objects, so the
  methods that repair CAMs on photos have nothing to repair.

proxy: 1 to 3 larger objects (radius 30-40% of the short side, about a fifth of the image each),
  with the three failure modes that those methods address on photos:
  - partial activation: the 20 classes form 4 groups of 5 (four-legged animals, road vehicles,
    furniture, the rest) whose members share one body (shape, muted colours, coarse pattern). Each
    class has its own part, the front fifth of the object along its long axis, in two saturated
    colours with stripes. The part alone tells the class, so a classifier needs nothing else and its
    CAM lights the part, while the mask is the whole object.
  - context co-occurrence: horse stands on grass, train on a rail track, boat in water, aeroplane
    in sky, each under 80% of its objects, and 10% of all images hold one of these contexts at
    random, with or without its class. The context is background in every mask, yet it predicts
    its class, so CAMs fire on it.
  - confusable classes: cat/dog, cow/sheep, bus/car, bicycle/motorbike and chair/sofa are twins
    (same body; parts differing only by a small hue shift of one colour), and about half the images
    led by one twin also hold the other. Labels that so often come together, on looks so close,
    give each twin's CAM activation on the other.
  A scene is redrawn unless each single object shows half its area and 60% of its part.

VOC layout (the folder given is the ``VOC2012`` root):
  JPEGImages/<id>.jpg, Annotations/<id>.xml   every id, including a few XML-only ids (no mask)
  SegmentationClass/<id>.png      official masks: every other train id and all val ids, with a 255
                                  band along every object boundary, as VOC draws it
  SegmentationClassAug/<id>.png   every train and val id; where an official mask exists it is copied
                                  (band included, as in the released aug set), elsewhere it is
                                  SBD-style, without the band
  ImageSets/Segmentation/{train,val,trainval}.txt   as VOC: only ids with an official mask
  ImageSets/Segmentation/train_aug.txt              every train id (the SBD-augmented list)
  ImageSets/Main/{train,val,trainval}.txt           every id; the XML-only ids are in train

COCO layout: train2014/, val2014/, annotations/instances_{train,val}2014.json. All 80 official
categories are listed; images use only the 20 that match the VOC classes (`VOC_TO_COCO`), each
drawn with its VOC class's appearance. Objects are polygons, except those whose visible part has a
hole and the iscrowd=1 regions (a cluster of small same-class objects; the first image of each split
has one), which are uncompressed RLE as COCO stores crowds.

Output is byte-identical for a given seed, whatever `jobs` is: each image draws from its own
generator seeded by (seed, layout, split, index, style), JPEG quality is fixed and no file holds a
date. Any style but the basic one is named in every XML's <source><database> and in COCO's info
description.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import functools
import json
import multiprocessing
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wavecam.classes import COCO_CATEGORIES, IGNORE_INDEX, NUM_VOC_CLASSES, VOC_CLASSES
from wavecam.io import atomic_path, save_json, save_png

JPEG_QUALITY = 90
SETTINGS_FILE = "wavecam_synthetic.json"
MIN_SIZE = 32
MAX_SCENE_TRIES = 100

# --- appearance --------------------------------------------------------------------------------
# Shapes are implicit functions of object coordinates (u, v), where the object fills about the
# unit disc; drawing a whole object is then one vectorised test over its bounding window.


def _regular_polygon(n: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def inside(u, v):
        phi = np.mod(np.arctan2(v, u), 2 * np.pi / n) - np.pi / n
        return np.hypot(u, v) * np.cos(phi) <= np.cos(np.pi / n)
    return inside


def _heart(u, v):
    x, y = 1.2 * u, 1.2 * v + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


SHAPES = {
    "arrow": lambda u, v: (((u >= -1) & (u <= 0.15) & (np.abs(v) <= 0.25))
                           | ((u >= 0.15) & (np.abs(v) <= 0.88 * (1 - u)))),
    "ring": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= 0.55),
    "triangle": lambda u, v: (v >= -0.5) & (v <= 1 - np.sqrt(3) * np.abs(u)),
    "crescent": lambda u, v: (np.hypot(u, v) <= 1) & (np.hypot(u - 0.6, v) >= 0.75),
    "rectangle": lambda u, v: (np.abs(u) <= 1) & (np.abs(v) <= 0.45),
    "hexagon": _regular_polygon(6),
    "ellipse": lambda u, v: u**2 + (v / 0.7) ** 2 <= 1,
    "heart": _heart,
    "tee": lambda u, v: (((np.abs(u) <= 1) & (v >= 0.45) & (v <= 1))
                         | ((np.abs(u) <= 0.3) & (v >= -1) & (v <= 0.45))),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1)),
    "trapezoid": lambda u, v: (np.abs(v) <= 0.6) & (np.abs(u) <= 0.55 + 0.375 * (v + 0.6)),
    "pentagon": _regular_polygon(5),
    "diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 1,
    "bowtie": lambda u, v: (np.abs(v) <= 0.9 * np.abs(u)) & (np.abs(u) <= 1),
    "star": lambda u, v: np.hypot(u, v) <= 0.4 + 0.6 * np.cos(2.5 * np.arctan2(v, u)) ** 2,
    "flower": lambda u, v: np.hypot(u, v) <= 0.55 + 0.45 * np.abs(np.cos(3 * np.arctan2(v, u))),
    "dome": lambda u, v: (np.hypot(u, v + 0.4) <= 1) & (v >= -0.4),
    "ell": lambda u, v: (((u >= -1) & (u <= -0.3) & (np.abs(v) <= 1))
                         | ((v >= 0.3) & (v <= 1) & (np.abs(u) <= 1))),
    "chevron": lambda u, v: ((np.abs(v) <= 0.95) & (u - 0.9 * np.abs(v) + 0.4 >= 0)
                             & (u - 0.9 * np.abs(v) + 0.4 <= 0.55)),
    "frame": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) <= 0.9) & (np.maximum(np.abs(u), np.abs(v)) >= 0.55),
}


def _wrap(x):
    return x - np.round(x)


# Patterns map object coordinates to the mix t in [0, 1] between a class's two colours; they are
# drawn in object coordinates so the texture turns and scales with the object.
PATTERNS = {
    "stripes": lambda u, v, f, p: np.sin(np.pi * f * u + p) > 0,
    "checks": lambda u, v, f, p: np.sin(np.pi * f * u + p) * np.sin(np.pi * f * v + p) > 0,
    "dots": lambda u, v, f, p: np.hypot(_wrap(f * u / 2 + p), _wrap(f * v / 2 + p)) < 0.3,
    "gradient": lambda u, v, f, p: np.clip((u + 1) / 2, 0, 1),
    "rings": lambda u, v, f, p: np.sin(np.pi * f * np.hypot(u, v) + p) > 0,
}
CLASS_SHAPES = (
    "arrow", "ring", "triangle", "crescent", "rectangle", "hexagon", "ellipse", "heart", "tee", "cross",
    "trapezoid", "pentagon", "diamond", "bowtie", "star", "flower", "dome", "ell", "chevron", "frame",
)


@dataclass(frozen=True)
class Look:
    shape: str
    pattern: str
    colour1: tuple[float, float, float]   # RGB 0..255, saturated
    colour2: tuple[float, float, float]


def _saturated(hue: float, value: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.85, value)
    return (255 * r, 255 * g, 255 * b)


def _class_looks() -> tuple[Look, ...]:
    """Class i: shape i, pattern and colours chosen so that no two classes share a combination.
    Colours have a chroma of at least ~0.5, far from the background's (at most ~0.15)."""
    patterns = tuple(PATTERNS)
    looks = []
    for i, shape in enumerate(CLASS_SHAPES):
        hue, dark = (i % 10) / 10, i >= 10
        looks.append(Look(
            shape=shape,
            pattern=patterns[(i + 2 * dark) % len(patterns)],
            colour1=_saturated(hue, 0.6 if dark else 0.95),
            colour2=_saturated(hue + 0.3 + 0.2 * dark, 0.9),
        ))
    return tuple(looks)


CLASS_LOOKS = _class_looks()
VOC_TO_COCO = {
    "aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
    "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv",
}
_COCO_ID = {name: cid for cid, name in COCO_CATEGORIES}
COCO_IDS_USED = tuple(_COCO_ID[VOC_TO_COCO.get(name, name)] for name in VOC_CLASSES)   # by VOC class index

# --- scenes ------------------------------------------------------------------------------------


@dataclass
class Scene:
    image: np.ndarray        # (H, W, 3) uint8 RGB
    instances: np.ndarray    # (H, W) uint8: 0 background, k for the k-th object (1-based)
    classes: list[int]       # 0-based VOC class index per object
    crowd: list[bool]        # per object: a cluster of small objects annotated as one crowd region
    full_area: list[int]     # per object: pixels it would cover if nothing were drawn over it
    parts: np.ndarray | None = None     # proxy style: (H, W) bool, the visible discriminative parts
    context: np.ndarray | None = None   # proxy style: (H, W) uint8, 1 + index in CONTEXTS where a
                                        # context is seen (never on an object), else 0

    def class_map(self) -> np.ndarray:
        lut = np.array([0] + [c + 1 for c in self.classes], dtype=np.uint8)
        return lut[self.instances]

    def mask(self, k: int) -> np.ndarray:
        return self.instances == k


def boundary_band(instances: np.ndarray) -> np.ndarray:
    """Pixels within a few pixels of a boundary between two objects or an object and background:
    ~2 px wide at 128 px, ~6 px at 500 px, which is what VOC's hand-drawn void band measures."""
    k = 2 * max(1, round(max(instances.shape) / 160)) + 1
    kernel = np.ones((k, k), np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


def _dull_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    grey = rng.uniform(40, 215)
    return tuple(float(c) for c in grey + rng.uniform(-20, 20, 3))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w, 3) float32 clutter: smooth colour field, blobs, lines, grating and fine noise."""
    cells = int(rng.integers(2, 6))
    field = rng.uniform(50, 205, (cells, cells, 1)) + rng.uniform(-20, 20, (cells, cells, 3))
    img = cv2.resize(field.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    side = min(h, w)
    for _ in range(rng.integers(3, 9)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.uniform(0.05, 0.3) * side), int(rng.uniform(0.05, 0.3) * side))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, _dull_colour(rng), -1)
    for _ in range(rng.integers(3, 11)):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, _dull_colour(rng), int(rng.integers(1, 4)))
    yy, xx = np.ogrid[0:h, 0:w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    grating = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    img += (rng.uniform(3, 10) * grating)[..., None].astype(np.float32)
    noise = rng.normal(0, 40, (h, w, 3)).astype(np.float32)
    img += cv2.GaussianBlur(noise, (0, 0), sigmaX=2)
    return img


@dataclass(frozen=True)
class Placement:
    cy: float
    cx: float
    radius: float
    angle: float
    aspect: float


def _placement(rng: np.random.Generator, h: int, w: int) -> Placement:
    return Placement(cy=rng.uniform(0.1, 0.9) * h, cx=rng.uniform(0.1, 0.9) * w,
                     radius=rng.uniform(0.12, 0.28) * min(h, w), angle=rng.uniform(0, 2 * np.pi),
                     aspect=float(np.exp(rng.uniform(-0.25, 0.25))))


def _crowd_placements(rng: np.random.Generator, h: int, w: int) -> list[Placement]:
    cy, cx, side = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w, min(h, w)
    return [Placement(cy=cy + rng.normal(0, 0.08 * side), cx=cx + rng.normal(0, 0.08 * side),
                      radius=rng.uniform(0.06, 0.09) * side, angle=rng.uniform(0, 2 * np.pi),
                      aspect=float(np.exp(rng.uniform(-0.25, 0.25))))
            for _ in range(rng.integers(3, 6))]


def _draw_object(image: np.ndarray, rng: np.random.Generator, look: Look, at: Placement) -> np.ndarray:
    """Paint one object into `image` (float32, in place); return its (H, W) bool mask."""
    h, w = image.shape[:2]
    ru, rv = at.radius * np.sqrt(at.aspect), at.radius / np.sqrt(at.aspect)
    reach = np.sqrt(2) * max(ru, rv) + 1
    y0, y1 = max(0, int(at.cy - reach)), min(h, int(at.cy + reach) + 1)
    x0, x1 = max(0, int(at.cx - reach)), min(w, int(at.cx + reach) + 1)
    mask = np.zeros((h, w), dtype=bool)
    if y0 >= y1 or x0 >= x1:
        return mask
    dy = np.arange(y0, y1)[:, None] + 0.5 - at.cy
    dx = np.arange(x0, x1)[None, :] + 0.5 - at.cx
    cos, sin = np.cos(at.angle), np.sin(at.angle)
    u, v = (cos * dx + sin * dy) / ru, (cos * dy - sin * dx) / rv
    inside = SHAPES[look.shape](u, v)
    t = PATTERNS[look.pattern](u, v, rng.uniform(2, 3.5), rng.uniform(0, 2 * np.pi)).astype(np.float32)[..., None]
    c1 = np.asarray(look.colour1, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    c2 = np.asarray(look.colour2, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    light_dir = rng.normal(size=2)
    light_dir /= np.linalg.norm(light_dir) + 1e-9
    light = (0.9 + 0.15 * np.clip(light_dir[0] * u + light_dir[1] * v, -1, 1)).astype(np.float32)[..., None]
    colour = ((1 - t) * c1 + t * c2) * light
    image[y0:y1, x0:x1][inside] = colour[inside]
    mask[y0:y1, x0:x1] = inside
    return mask


def _try_scene(rng: np.random.Generator, h: int, w: int, first_class: int, with_crowd: bool) -> Scene | None:
    """One attempt; None when some object is hidden too much to be labelled (then redraw)."""
    image = _background(rng, h, w)
    classes = [first_class] + [int(c) for c in rng.integers(0, NUM_VOC_CLASSES, int(rng.integers(0, 3)))]
    crowd = [False] * len(classes)
    if with_crowd:   # drawn first, so the single objects may cover it
        classes.insert(0, int(rng.integers(0, NUM_VOC_CLASSES)))
        crowd.insert(0, True)
    instances = np.zeros((h, w), dtype=np.uint8)
    full_area = []
    for k, (cls, is_crowd) in enumerate(zip(classes, crowd, strict=True), start=1):
        parts = _crowd_placements(rng, h, w) if is_crowd else [_placement(rng, h, w)]
        covered = np.zeros((h, w), dtype=bool)
        for at in parts:
            covered |= _draw_object(image, rng, CLASS_LOOKS[cls], at)
        instances[covered] = k
        full_area.append(int(covered.sum()))
    interior = ~boundary_band(instances)
    min_interior = 0.004 * h * w
    for k, full in enumerate(full_area, start=1):
        visible = instances == k
        if visible.sum() < 0.35 * full or (visible & interior).sum() < min_interior:
            return None
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 4, image.shape)
    return Scene(np.clip(image, 0, 255).astype(np.uint8), instances, classes, crowd, full_area)


# --- the proxy style ---------------------------------------------------------------------------
# Scenes with the three failure modes of CAMs on photos (the module docstring says why each).

HEAD_SHARE = 0.2            # share of an object's area that is its class's discriminative part
TWIN_HUE_SHIFT = 0.05       # the only difference between the parts of two twin classes
TWIN_RATE = 0.5             # chance that an image led by a twin class also holds its twin
CONTEXT_RATE = 0.8          # chance that an object of a context class stands on its context
STRAY_CONTEXT_RATE = 0.1    # chance that an image holds a context with no object of its class

_PROXY_GROUPS = (   # (body look, its classes); the body is all that a group's classes share
    (Look("ellipse", "gradient", (153, 95, 61), (204, 150, 102)),
     ("cat", "dog", "cow", "sheep", "horse")),
    (Look("rectangle", "stripes", (134, 89, 179), (191, 96, 172)),
     ("bus", "car", "bicycle", "motorbike", "train")),
    (Look("trapezoid", "checks", (191, 172, 96), (166, 94, 83)),
     ("chair", "sofa", "diningtable", "bottle", "tvmonitor")),
    (Look("hexagon", "rings", (80, 166, 150), (191, 96, 131)),
     ("aeroplane", "bird", "boat", "person", "pottedplant")),
)
_TWINS = (("cat", "dog"), ("cow", "sheep"), ("bus", "car"), ("bicycle", "motorbike"), ("chair", "sofa"))
_CONTEXT_OF = {"horse": "grass", "train": "rail", "boat": "water", "aeroplane": "sky"}


@dataclass(frozen=True)
class ProxyClass:
    body: Look
    head: tuple[tuple[float, float, float], tuple[float, float, float]]   # the part's two colours
    twin: int | None            # 0-based class index of the look-alike class
    context: str | None         # key of CONTEXTS


def _proxy_classes() -> tuple[ProxyClass, ...]:
    """Parts: 15 families (a twin pair is one family), each a hue from 5 and a second hue from 3
    offsets, so that families differ by at least a fifth of the hue circle in one of their colours,
    while the second twin of a pair differs from the first by TWIN_HUE_SHIFT alone."""
    index = {name: i for i, name in enumerate(VOC_CLASSES)}
    twin_of = {index[b]: index[a] for a, b in _TWINS} | {index[a]: index[b] for a, b in _TWINS}
    second_twins = {index[b] for _, b in _TWINS}
    families: list[int] = []
    for _, names in _PROXY_GROUPS:
        families += [index[n] for n in names if index[n] not in second_twins]
    out: dict[int, ProxyClass] = {}
    for body, names in _PROXY_GROUPS:
        for name in names:
            cls = index[name]
            k = families.index(twin_of[cls] if cls in second_twins else cls)
            hue = (k % 5) / 5 + (TWIN_HUE_SHIFT if cls in second_twins else 0.0)
            second = (k % 5) / 5 + (0.25, 0.5, 0.75)[k // 5]
            out[cls] = ProxyClass(body, (_bright(hue), _bright(second)), twin_of.get(cls), _CONTEXT_OF.get(name))
    return tuple(out[i] for i in range(NUM_VOC_CLASSES))


def _bright(hue: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.9, 0.95)
    return (255 * r, 255 * g, 255 * b)


def _head_cut(shape: str) -> float:
    """The u beyond which a shape holds HEAD_SHARE of its area: the part is the object's front."""
    g = np.linspace(-1.2, 1.2, 481)
    u, v = np.meshgrid(g, g)
    return float(np.quantile(u[SHAPES[shape](u, v)], 1 - HEAD_SHARE))


PROXY_CLASSES = _proxy_classes()
_HEAD_CUT = {body.shape: _head_cut(body.shape) for body, _ in _PROXY_GROUPS}


def _proxy_placement(rng: np.random.Generator, h: int, w: int) -> Placement:
    """Larger and more central than the basic style's: a part must span a few cells of a stride-16 CAM."""
    return Placement(cy=rng.uniform(0.25, 0.75) * h, cx=rng.uniform(0.25, 0.75) * w,
                     radius=rng.uniform(0.3, 0.4) * min(h, w), angle=rng.uniform(0, 2 * np.pi),
                     aspect=float(np.exp(rng.uniform(-0.2, 0.2))))


def _proxy_crowd_placements(rng: np.random.Generator, h: int, w: int) -> list[Placement]:
    """The basic style's crowd, its members grown so that the large single objects drawn over them
    leave enough of the crowd in sight."""
    return [dataclasses.replace(at, radius=1.6 * at.radius) for at in _crowd_placements(rng, h, w)]


@dataclass(frozen=True)
class Drawn:
    mask: np.ndarray     # (H, W) bool: the whole object in the image
    head: np.ndarray     # (H, W) bool: its part in the image
    area: int            # pixels of the whole object, the image's border not cutting it
    head_area: int


def _draw_proxy_object(image: np.ndarray, rng: np.random.Generator, cls: int, at: Placement) -> Drawn:
    """Paint body and part of one object into `image` (float32, in place)."""
    h, w = image.shape[:2]
    look = PROXY_CLASSES[cls]
    ru, rv = at.radius * np.sqrt(at.aspect), at.radius / np.sqrt(at.aspect)
    reach = np.sqrt(2) * max(ru, rv) + 1
    # the window is not clipped to the image yet: its full area tells how much the border cuts off
    ys = np.arange(int(at.cy - reach), int(at.cy + reach) + 1)
    xs = np.arange(int(at.cx - reach), int(at.cx + reach) + 1)
    dy, dx = ys[:, None] + 0.5 - at.cy, xs[None, :] + 0.5 - at.cx
    cos, sin = np.cos(at.angle), np.sin(at.angle)
    u, v = (cos * dx + sin * dy) / ru, (cos * dy - sin * dx) / rv
    inside = SHAPES[look.body.shape](u, v)
    head = inside & (u >= _HEAD_CUT[look.body.shape])
    body_t = PATTERNS[look.body.pattern](u, v, rng.uniform(1.0, 1.8), rng.uniform(0, 2 * np.pi))
    head_t = np.sin(np.pi * rng.uniform(2.5, 3.5) * v + rng.uniform(0, 2 * np.pi)) > 0
    colours = [np.asarray(c, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
               for c in (look.body.colour1, look.body.colour2, *look.head)]
    body = (1 - body_t[..., None]) * colours[0] + body_t[..., None] * colours[1]
    part = np.where(head_t[..., None], colours[3], colours[2])
    light_dir = rng.normal(size=2)
    light_dir /= np.linalg.norm(light_dir) + 1e-9
    light = 0.9 + 0.15 * np.clip(light_dir[0] * u + light_dir[1] * v, -1, 1)
    colour = (np.where(head[..., None], part, body) * light[..., None]).astype(np.float32)

    keep_y, keep_x = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    mask, head_mask = np.zeros((h, w), bool), np.zeros((h, w), bool)
    if keep_y.any() and keep_x.any():
        win = np.ix_(keep_y, keep_x)
        y0, y1, x0, x1 = ys[keep_y][0], ys[keep_y][-1] + 1, xs[keep_x][0], xs[keep_x][-1] + 1
        image[y0:y1, x0:x1][inside[win]] = colour[win][inside[win]]
        mask[y0:y1, x0:x1], head_mask[y0:y1, x0:x1] = inside[win], head[win]
    return Drawn(mask, head_mask, int(inside.sum()), int(head.sum()))


# Contexts: background regions (label 0) of a colour and texture no class has, drawn around an
# object before it. Each takes the object's placement and returns (region, colour field).


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _water(rng: np.random.Generator, h: int, w: int, at: Placement) -> tuple[np.ndarray, np.ndarray]:
    """A band across the image from the object's middle down, with horizontal ripples."""
    yy, xx = _grid(h, w)
    r = at.radius
    top = at.cy - 0.1 * r + 0.06 * r * np.sin(2 * np.pi * xx / (0.8 * r) + rng.uniform(0, 2 * np.pi))
    region = (yy >= top) & (yy <= at.cy + rng.uniform(1.3, 1.8) * r)
    wobble = 0.15 * r * np.sin(2 * np.pi * xx / (1.5 * r) + rng.uniform(0, 2 * np.pi))
    ripple = np.sin(2 * np.pi * (yy + wobble) / (0.3 * r))
    colour = np.array([45, 95, 165], np.float32) + (28 * ripple)[..., None] * np.array([1, 1, 0.8], np.float32)
    return region, colour


def _grass(rng: np.random.Generator, h: int, w: int, at: Placement) -> tuple[np.ndarray, np.ndarray]:
    """A wide patch under and around the object, with vertical blades."""
    yy, xx = _grid(h, w)
    r = at.radius
    cy = at.cy + 0.5 * r
    region = ((xx - at.cx) / (rng.uniform(1.6, 2.0) * r)) ** 2 + ((yy - cy) / (1.1 * r)) ** 2 <= 1
    blades = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=0.6, sigmaY=2.5)
    blades /= blades.std() + 1e-6
    colour = np.array([70, 145, 50], np.float32) + (22 * blades)[..., None] * np.array([0.6, 1, 0.5], np.float32)
    return region, colour


def _rail(rng: np.random.Generator, h: int, w: int, at: Placement) -> tuple[np.ndarray, np.ndarray]:
    """A track along the object's long axis, across the whole image: ballast, sleepers, two rails.
    Its ballast is as dull as the background: only the texture tells it."""
    yy, xx = _grid(h, w)
    r = at.radius
    along = (xx - at.cx) * np.cos(at.angle) + (yy - at.cy) * np.sin(at.angle)
    across = np.abs((yy - at.cy) * np.cos(at.angle) - (xx - at.cx) * np.sin(at.angle))
    region = across <= 0.62 * r
    colour = np.array([108, 98, 90], np.float32) + rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    sleeper = np.mod(along / (0.42 * r) + rng.uniform(0, 1), 1) < 0.32
    colour[sleeper & (across <= 0.56 * r)] = (62, 46, 36)
    colour[np.abs(across - 0.38 * r) <= max(0.7, 0.05 * r)] = (210, 210, 218)
    return region, colour


def _sky(rng: np.random.Generator, h: int, w: int, at: Placement) -> tuple[np.ndarray, np.ndarray]:
    """A large smooth light-blue field around the object, lighter downwards, with soft clouds."""
    yy, xx = _grid(h, w)
    r = at.radius
    region = ((xx - at.cx) / (2.1 * r)) ** 2 + ((yy - at.cy) / (1.6 * r)) ** 2 <= 1
    colour = (np.array([125, 170, 228], np.float32)
              + np.clip((yy - at.cy) / (3 * r) + 0.5, 0, 1)[..., None] * np.array([45, 35, 12], np.float32))
    clouds = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(2, 5)):
        centre = (int(at.cx + rng.uniform(-1.8, 1.8) * r), int(at.cy + rng.uniform(-1.3, 1.3) * r))
        axes = (max(1, int(rng.uniform(0.3, 0.6) * r)), max(1, int(rng.uniform(0.12, 0.25) * r)))
        cv2.ellipse(clouds, centre, axes, 0, 0, 360, 1.0, -1)
    clouds = cv2.GaussianBlur(clouds, (0, 0), sigmaX=max(0.5, 0.08 * r))[..., None]
    return region, (1 - clouds) * colour + clouds * np.array([238, 242, 246], np.float32)


CONTEXTS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "water": _water, "grass": _grass, "rail": _rail, "sky": _sky,
}


def _try_proxy_scene(rng: np.random.Generator, h: int, w: int, first_class: int,
                     with_crowd: bool) -> Scene | None:
    """One attempt at a proxy-style scene; None when an object or its part is hidden too much."""
    image = _background(rng, h, w)
    classes = [first_class]
    twin = PROXY_CLASSES[first_class].twin
    if twin is not None and rng.random() < TWIN_RATE:
        classes.append(twin)
    n_extra = int(rng.choice(3, p=(0.4, 0.45, 0.15)))   # the twin, when drawn, is one of them
    classes += [int(c) for c in rng.integers(0, NUM_VOC_CLASSES, max(0, 1 + n_extra - len(classes)))]
    crowd = [False] * len(classes)
    if with_crowd:   # drawn first, so the single objects may cover it
        classes.insert(0, int(rng.integers(0, NUM_VOC_CLASSES)))
        crowd.insert(0, True)
    placements = [_proxy_crowd_placements(rng, h, w) if is_crowd else [_proxy_placement(rng, h, w)]
                  for is_crowd in crowd]

    # contexts go under every object, so they are drawn first, around where the objects will be
    grounds = [(PROXY_CLASSES[cls].context, members[0])
               for cls, members, is_crowd in zip(classes, placements, crowd, strict=True)
               if not is_crowd and PROXY_CLASSES[cls].context is not None and rng.random() < CONTEXT_RATE]
    if rng.random() < STRAY_CONTEXT_RATE:
        grounds.append((str(rng.choice(list(CONTEXTS))), _proxy_placement(rng, h, w)))
    context = np.zeros((h, w), np.uint8)
    for name, at in grounds:
        region, colour = CONTEXTS[name](rng, h, w, at)
        image[region] = colour[region]
        context[region] = 1 + list(CONTEXTS).index(name)

    instances = np.zeros((h, w), dtype=np.uint8)
    heads = np.zeros((h, w), dtype=bool)
    full_area, singles = [], []
    for k, (cls, members) in enumerate(zip(classes, placements, strict=True), start=1):
        covered = np.zeros((h, w), dtype=bool)
        for at in members:
            drawn = _draw_proxy_object(image, rng, cls, at)
            covered |= drawn.mask
            heads[drawn.mask] = drawn.head[drawn.mask]
        instances[covered] = k
        full_area.append(int(covered.sum()))
        singles.append(drawn)   # a crowd's last member here, never read
    interior = ~boundary_band(instances)
    min_interior = 0.004 * h * w
    for k, (full, drawn, is_crowd) in enumerate(zip(full_area, singles, crowd, strict=True), start=1):
        visible = instances == k
        if visible.sum() < 0.35 * full or (visible & interior).sum() < min_interior:
            return None
        # a single object must show most of itself and of its part, or its label could not be told
        if not is_crowd and (visible.sum() < 0.5 * drawn.area or (visible & heads).sum() < 0.6 * drawn.head_area):
            return None
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0, 4, image.shape)
    context[instances > 0] = 0
    return Scene(np.clip(image, 0, 255).astype(np.uint8), instances, classes, crowd, full_area,
                 parts=heads & (instances > 0), context=context)


# --- styles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    try_scene: Callable[[np.random.Generator, int, int, int, bool], Scene | None]
    seed_tail: tuple[int, ...]   # appended to every image's seed, so no two styles share a stream
    database: str                # VOC's <source><database>


STYLES = {
    "basic": Style(_try_scene, (), "wavecam synthetic"),
    "proxy": Style(_try_proxy_scene, (1,), "wavecam synthetic, proxy style"),
}


def _style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r} (known: {', '.join(STYLES)})") from None


def render_scene(rng: np.random.Generator, height: int, width: int, first_class: int,
                 with_crowd: bool = False, style: str = "basic") -> Scene:
    """Draw a scene of `style` (a key of STYLES) whose first object is of `first_class` (0-based VOC
    index), plus 0-2 more; with `with_crowd`, under them a crowd of one class."""
    try_scene = _style(style).try_scene
    for _ in range(MAX_SCENE_TRIES):
        scene = try_scene(rng, height, width, first_class, with_crowd)
        if scene is not None:
            return scene
    raise RuntimeError(f"no valid scene in {MAX_SCENE_TRIES} tries at {height}x{width}; use a larger size")


def _image_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    short = int(round(size * rng.uniform(0.7, 1.0)))
    return (short, size) if rng.random() < 0.7 else (size, short)


def _first_class(seed: int, index: int) -> int:
    """Cycle through a seed-dependent order of the classes, so that every class leads an image
    once per 20 images and the class frequencies stay balanced even for tiny sets."""
    return int(np.random.default_rng([seed, 99]).permutation(NUM_VOC_CLASSES)[index % NUM_VOC_CLASSES])


# --- writers shared by both layouts ------------------------------------------------------------


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _save_ids(path: Path, ids: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in sorted(ids)))


def _run(fn: Callable, tasks: list, jobs: int) -> list:
    if jobs <= 1:
        return [fn(t) for t in tasks]
    with multiprocessing.Pool(jobs) as pool:
        return pool.map(fn, tasks, chunksize=max(1, len(tasks) // (4 * jobs)))


def _check(n_train: int, n_val: int, size: int, seed: int, jobs: int, style: str) -> None:
    _style(style)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need at least one train and one val image (got {n_train}, {n_val})")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px (got {size})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative (got {seed})")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (got {jobs})")


# --- VOC ---------------------------------------------------------------------------------------

_VOC_STREAM, _COCO_STREAM = 0, 1


def voc_image_id(index: int) -> str:
    return f"{2007 + index % 6}_{32 + 7 * index:06d}"


def _sub(parent: ET.Element, tag: str, text: object) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = str(text)
    return el


def voc_annotation(image_id: str, scene: Scene, segmented: bool, style: str = "basic") -> ET.Element:
    """VOC XML; boxes are 1-based and enclose the visible part, as VOC's guidelines ask."""
    h, w = scene.instances.shape
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC2012")
    _sub(root, "filename", f"{image_id}.jpg")
    _sub(ET.SubElement(root, "source"), "database", _style(style).database)
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        _sub(size, tag, value)
    _sub(root, "segmented", int(segmented))
    for k, cls in enumerate(scene.classes, start=1):
        ys, xs = np.nonzero(scene.mask(k))
        obj = ET.SubElement(root, "object")
        _sub(obj, "name", VOC_CLASSES[cls])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", int(ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1))
        _sub(obj, "occluded", int(len(ys) < scene.full_area[k - 1]))
        _sub(obj, "difficult", 0)
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xs.min()), ("ymin", ys.min()), ("xmax", xs.max()), ("ymax", ys.max())):
            _sub(box, tag, int(value) + 1)
    ET.indent(root, space="\t")
    return root


def _write_voc_image(root: Path, seed: int, size: int, style: str, task: tuple[int, str, bool, bool]) -> None:
    index, image_id, official, has_mask = task
    rng = np.random.default_rng([seed, _VOC_STREAM, index, *_style(style).seed_tail])
    scene = render_scene(rng, *_image_shape(rng, size), first_class=_first_class(seed, index), style=style)
    _save_jpeg(root / "JPEGImages" / f"{image_id}.jpg", scene.image)
    with atomic_path(root / "Annotations" / f"{image_id}.xml") as tmp:
        tmp.write_text(ET.tostring(voc_annotation(image_id, scene, official, style), encoding="unicode") + "\n")
    if not has_mask:
        return
    label = scene.class_map()
    if official:
        label[boundary_band(scene.instances)] = IGNORE_INDEX
        save_png(root / "SegmentationClass" / f"{image_id}.png", label, palette=True)  # as VOC's own
    save_png(root / "SegmentationClassAug" / f"{image_id}.png", label)


def _save_settings(root: Path, layout: str, **settings) -> None:
    """The settings the set was drawn with, written last: what made a dataset's content is then part of
    the identity of every output made from it (`synthetic_identity`), since a set drawn again into the
    same folder with other settings has the same path but other images."""
    save_json(root / SETTINGS_FILE, {"layout": layout, **settings})


def synthetic_identity(root: str | Path) -> dict | None:
    """The settings a synthetic set at `root` was drawn with; None for any other dataset."""
    path = Path(root) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def make_synthetic_voc(out: str | Path, n_train: int = 40, n_val: int = 10, size: int = 128, seed: int = 0,
                       jobs: int = 1, style: str = "basic") -> Path:
    """Write the VOC-layout set under `out` (used as the VOC2012 root) and return that root."""
    _check(n_train, n_val, size, seed, jobs, style)
    root = Path(out)
    n_xml_only = max(2, n_train // 10)
    ids = [voc_image_id(i) for i in range(n_train + n_val + n_xml_only)]
    train, val, xml_only = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    official_train = train[::2]
    official, has_mask = set(official_train) | set(val), set(train) | set(val)
    tasks = [(i, image_id, image_id in official, image_id in has_mask) for i, image_id in enumerate(ids)]
    _run(functools.partial(_write_voc_image, root, seed, size, style), tasks, jobs)

    lists = {
        "Segmentation/train.txt": official_train, "Segmentation/val.txt": val,
        "Segmentation/trainval.txt": official_train + val, "Segmentation/train_aug.txt": train,
        "Main/train.txt": train + xml_only, "Main/val.txt": val, "Main/trainval.txt": ids,
    }
    for name, list_ids in lists.items():
        _save_ids(root / "ImageSets" / name, list_ids)
    _save_settings(root, "voc", n_train=n_train, n_val=n_val, size=size, seed=seed, style=style)
    return root


# --- COCO --------------------------------------------------------------------------------------


def coco_image_id(split: str, index: int) -> int:
    """Ids unique across the two splits, as COCO's are (train ends in 9, val in 2)."""
    return 10 * index + (9 if split == "train" else 42)


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with a 0-run."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Outer contours as COCO polygons, or None where polygons cannot hold the mask (holes)."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0][:, 3] >= 0).any():
        return None
    # pycocotools reads a 4-number list as a box, so a polygon needs 3 points or more.
    polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    return polys or None


def coco_annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, crowd: bool) -> dict:
    ys, xs = np.nonzero(mask)
    segmentation = None if crowd else _polygons(mask)
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "segmentation": segmentation if segmentation is not None else rle_uncompressed(mask),
        "area": float(len(ys)),
        "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
        "iscrowd": int(crowd),
    }


def _write_coco_image(root: Path, seed: int, size: int, style: str, split: str,
                      index: int) -> tuple[dict, list[dict]]:
    split_tag = 0 if split == "train" else 1
    rng = np.random.default_rng([seed, _COCO_STREAM, split_tag, index, *_style(style).seed_tail])
    shape = _image_shape(rng, size)
    scene = render_scene(rng, *shape, first_class=_first_class(seed, index),
                         with_crowd=index == 0 or rng.random() < 0.15, style=style)
    image_id = coco_image_id(split, index)
    file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
    _save_jpeg(root / f"{split}2014" / file_name, scene.image)
    anns = [coco_annotation(scene.mask(k), 100 * image_id + k, image_id, COCO_IDS_USED[cls], scene.crowd[k - 1])
            for k, cls in enumerate(scene.classes, start=1)]
    return {"id": image_id, "file_name": file_name, "height": shape[0], "width": shape[1]}, anns


def _description(style: str) -> str:
    return "wavecam synthetic set" if style == "basic" else f"wavecam synthetic set, {style} style"


def make_synthetic_coco(out: str | Path, n_train: int = 40, n_val: int = 10, size: int = 128, seed: int = 0,
                        jobs: int = 1, style: str = "basic") -> Path:
    """Write the COCO-2014-layout set under `out` and return that root."""
    _check(n_train, n_val, size, seed, jobs, style)
    root = Path(out)
    categories = [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES]
    for split, n in (("train", n_train), ("val", n_val)):
        results = _run(functools.partial(_write_coco_image, root, seed, size, style, split), list(range(n)), jobs)
        save_json(root / "annotations" / f"instances_{split}2014.json", {
            "info": {"description": f"{_description(style)}, COCO 2014 layout ({split})", "version": "1.0"},
            "licenses": [],
            "images": [image for image, _ in results],
            "annotations": [ann for _, anns in results for ann in anns],
            "categories": categories,
        })
    _save_settings(root, "coco", n_train=n_train, n_val=n_val, size=size, seed=seed, style=style)
    return root


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write (the VOC2012 or COCO folder)")
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-val", type=int, default=10)
    parser.add_argument("--size", type=int, default=128, help="long side of every image, in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("voc", "coco"), default="voc")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes; the output does not depend on it")
    parser.add_argument("--style", choices=tuple(STYLES), default="basic",
                        help="basic: every class told by its whole object; proxy: parts, contexts and "
                             "twin classes, the failure modes of CAMs on photos (module docstring)")
    args = parser.parse_args(argv)
    make = make_synthetic_voc if args.layout == "voc" else make_synthetic_coco
    try:
        root = make(args.out, args.n_train, args.n_val, size=args.size, seed=args.seed, jobs=args.jobs,
                    style=args.style)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote a synthetic {args.layout.upper()} set ({args.style} style, {args.n_train} train, "
          f"{args.n_val} val, {args.size} px) to {root}")


if __name__ == "__main__":
    main()
