"""Render CT-like axial slices in Hounsfield units around real LIDC radiologist contours.

The LIDC annotation database has contours, ratings and scanner geometry but no pixels. This module draws a
plausible chest around them, in millimetres converted with each scan's real pixel spacing: air, a body outline
with subcutaneous fat and chest-wall muscle, ribs, sternum, spine, mediastinum with heart and aorta, two lung
fields with parenchymal texture, a posterior density gradient and branching vessels, then scanner noise.
The nodules are painted from the real contours at their real pixel positions. Their density follows the
texture rating (ground glass -> part-solid -> solid), calcification adds calcified density in the rated
pattern, subtlety scales the contrast and margin sets the edge blur. Each lung is sized per scan so that the
scan's nodules lie inside it; nodules at the edge of the lung abut the chest wall (juxtapleural), the way
peripheral nodules touch the pleura in real CT.

Everything is a deterministic function of (patient, slice z, seed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
LUNG_HU = -860.0
BLOOD_HU = 40.0
CONTRAST_BLOOD_HU = 170.0

# Nodule density by texture rating (1 = non-solid/ground glass, 3 = part solid, 5 = solid): (halo, core) HU.
TEXTURE_HU = {
    1: (-640.0, -640.0),
    2: (-520.0, -300.0),
    3: (-450.0, -60.0),
    4: (-250.0, 10.0),
    5: (20.0, 20.0),
}
# Fraction of the nodule (by distance from its edge) that is solid core, by texture rating.
TEXTURE_CORE = {1: 0.0, 2: 0.25, 3: 0.45, 4: 0.7, 5: 1.0}
# Subtlety 1 (extremely subtle) .. 5 (obvious) scales the nodule's contrast against the parenchyma.
SUBTLETY_CONTRAST = {1: 0.45, 2: 0.6, 3: 0.75, 4: 0.9, 5: 1.0}
# Margin 1 (poorly defined) .. 5 (sharp): edge blur in mm.
MARGIN_BLUR_MM = {1: 1.6, 2: 1.1, 3: 0.8, 4: 0.5, 5: 0.3}
CALCIUM_HU = 650.0


def stable_seed(*parts) -> int:
    """A seed that depends only on the values given (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class NoduleOnSlice:
    """One physical nodule as it appears on the slice being rendered."""

    reader_masks: tuple[np.ndarray, ...]  # each reader's filled contour at this z (bool, full size)
    texture: int
    calcification: int
    subtlety: int
    margin: int


@dataclass(frozen=True)
class Chest:
    """The per-scan anatomy, in millimetres relative to the body centre (x right-of-image, y posterior)."""

    center_px: tuple[float, float]
    body_axes: tuple[float, float]
    fat_mm: float
    lungs: tuple[tuple[float, float, float, float], ...]  # (centre x, centre y, half-width, half-height)
    heart: tuple[float, float, float, float]
    contrast: bool


LUNG_POWER = 2.4  # superellipse exponent: flatter than an ellipse, like a lung field in cross-section


def _superellipse_r(x, y, lung):
    cx, cy, ax, ay = lung
    return (np.abs((x - cx) / ax) ** LUNG_POWER + np.abs((y - cy) / ay) ** LUNG_POWER) ** (1 / LUNG_POWER)


def plan_chest(patient_key: str, seed: int, pixel_spacing: float, size: int, nodule_xy_px, contrast: bool):
    """Choose the anatomy for one scan so that its nodules (centroids, in pixels) lie inside the lungs."""
    rng = np.random.default_rng(stable_seed("chest", patient_key, seed))
    scale = rng.uniform(0.9, 1.08)
    center = (size / 2 + rng.uniform(-8, 8), size / 2 + rng.uniform(-12, 4))
    lungs = []
    for side in (-1, 1):
        lung = [side * 70 * scale, 6 * scale, 58 * scale * (0.96 if side > 0 else 1.0), 88 * scale]
        grow = 1.0
        for x_px, y_px in nodule_xy_px:
            x = (x_px - center[0]) * pixel_spacing
            y = (y_px - center[1]) * pixel_spacing
            if np.sign(x) == side or abs(x) < 1e-6:
                grow = max(grow, float(_superellipse_r(x, y, lung)) / 0.93)
        grow = min(grow, 1.3)
        lungs.append((lung[0] * (1 + (grow - 1) * 0.5), lung[1], lung[2] * grow, lung[3] * grow))
    half_w = max(abs(lx) + ax for lx, _, ax, _ in lungs)
    half_h = max(abs(ly) + ay for _, ly, _, ay in lungs)
    fat = rng.uniform(8, 22)
    wall = 12.0
    body = (half_w + wall + fat + rng.uniform(0, 6), half_h + wall + fat + rng.uniform(0, 6))
    heart = (18 * scale, -18 * scale, 50 * scale, 44 * scale)
    return Chest(center, body, fat, tuple(lungs), heart, contrast)


@dataclass(frozen=True)
class Anatomy:
    """The parts of a scan's slices that do not change with z: tissue background and the lung field."""

    background: np.ndarray  # HU, lungs still empty
    lung: np.ndarray  # bool
    y_mm: np.ndarray  # posterior distance from the body centre, for the gravity gradient
    blood_hu: float


def build_anatomy(chest: Chest, pixel_spacing: float, size: int) -> Anatomy:
    """Body, fat, muscle, ribs, sternum, spine, heart, aorta and the lung field, once per scan."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = (xx - chest.center_px[0]) * pixel_spacing
    y = (yy - chest.center_px[1]) * pixel_spacing
    img = np.full((size, size), AIR_HU, np.float32)

    def fill(cx, cy, ax, ay, value, target=img):
        center = (chest.center_px[0] + cx / pixel_spacing, chest.center_px[1] + cy / pixel_spacing)
        axes = (max(ax / pixel_spacing, 0.5), max(ay / pixel_spacing, 0.5))
        cv2.ellipse(target, (center, (2 * axes[0], 2 * axes[1]), 0.0), value, -1, lineType=cv2.LINE_8)

    bx, by = chest.body_axes
    fill(0, 0, bx, by, FAT_HU)
    fill(0, 0, bx - chest.fat_mm, by - chest.fat_mm, MUSCLE_HU)
    blood = CONTRAST_BLOOD_HU if chest.contrast else BLOOD_HU

    lung = np.zeros((size, size), bool)
    for lung_shape in chest.lungs:
        lung |= _superellipse_r(x, y, lung_shape) <= 1.0
    carve = np.zeros((size, size), np.uint8)
    fill(*chest.heart, 1, target=carve)
    fill(0.0, 62, 22, 26, 1, target=carve)  # the spine and the anterior mediastinum keep the lungs apart
    fill(0.0, -60, 12, 40, 1, target=carve)
    lung &= carve == 0

    # Ribs: cortical shells just outside the lungs, skipping the front and back midline.
    rng = np.random.default_rng(stable_seed("ribs", chest.center_px, chest.body_axes))
    rx = max(abs(lx) + ax for lx, _, ax, _ in chest.lungs) + 7
    ry = max(abs(ly) + ay for _, ly, _, ay in chest.lungs) + 7
    for angle in np.deg2rad(np.arange(25, 160, 22) + rng.uniform(-6, 6)):
        for side in (-1, 1):
            cx, cy = side * rx * abs(np.sin(angle)), -ry * np.cos(angle)
            fill(cx, cy, 6.5, 4.5, 800.0)
            fill(cx, cy, 4.0, 2.5, 250.0)

    fill(*chest.heart, blood - 5.0)
    fill(chest.heart[0] - 8, chest.heart[1] + 6, 16, 14, blood)  # a chamber, bright with contrast
    fill(14, 42, 12, 12, blood)  # descending aorta
    fill(0, 64, 19, 18, 300.0)  # vertebral body
    fill(0, 64, 15, 14, 220.0)
    fill(0, 90, 8, 9, 25.0)  # spinal canal
    fill(0, -by + chest.fat_mm + 8, 9, 5, 420.0)  # sternum
    return Anatomy(img, lung, y, blood)


def render_slice(
    anatomy: Anatomy,
    chest: Chest,
    pixel_spacing: float,
    nodules: list[NoduleOnSlice],
    slice_key: str,
    seed: int,
    noise_hu: float = 18.0,
) -> np.ndarray:
    """One axial slice in HU (float32): the scan's anatomy, this slice's parenchyma and nodules, noise."""
    rng = np.random.default_rng(stable_seed("slice", slice_key, seed))
    size = anatomy.background.shape[0]
    img = anatomy.background.copy()
    lung = anatomy.lung.copy()
    for nodule in nodules:  # a nodule the lung shapes missed (e.g. by the mediastinum) gets lung around it
        drawn = np.any(nodule.reader_masks, axis=0)
        if drawn.any() and lung[drawn].mean() < 0.5:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(4 / pixel_spacing) + 1,) * 2)
            lung |= cv2.dilate(drawn.astype(np.uint8), kernel).astype(bool)
    img[lung] = _parenchyma(rng, lung, anatomy.y_mm, chest, pixel_spacing, size, anatomy.blood_hu)[lung]

    for nodule in nodules:
        _paint_nodule(img, lung, nodule, pixel_spacing, rng)

    img = cv2.GaussianBlur(img, (0, 0), 0.7)  # partial-volume softening of every edge
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
    img += noise * (noise_hu / 0.33)  # the blur shrinks white noise std to ~0.33
    return np.clip(img, -1024, 3071)


def _parenchyma(rng, lung, y_mm, chest, spacing, size, blood):
    """Lung tissue: -860 HU, denser posteriorly (gravity), fine texture and a branching vessel tree."""
    texture = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0 / spacing)
    tissue = LUNG_HU + 30.0 * np.clip(y_mm / 90.0, -1, 1) + texture * 90.0
    vessels = np.zeros((size, size), np.float32)
    for lx, ly, ax, _ in chest.lungs:
        side = np.sign(lx)
        hilum = (chest.center_px[0] + (lx - side * ax * 0.55) / spacing, chest.center_px[1] + ly / spacing)
        for _ in range(rng.integers(2, 4)):
            angle = rng.uniform(-np.pi * 0.45, np.pi * 0.45) + (0 if side > 0 else np.pi)
            _branch(vessels, hilum, angle, rng.uniform(25, 38) / spacing, 1.7 / spacing, 4, rng)
    # Vessels cut across: small round cross-sections, thinner towards the periphery.
    ys, xs = np.nonzero(lung[::4, ::4])
    if len(xs):
        for i in rng.choice(len(xs), size=min(len(xs), 45), replace=False):
            radius = max(1, int(rng.uniform(0.5, 1.8) / spacing))
            cv2.circle(vessels, (int(xs[i] * 4), int(ys[i] * 4)), radius, 1.0, -1)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.6)
    vessels *= 0.85  # a slice cuts most vessels obliquely: partial volume keeps them below blood density
    return tissue * (1 - vessels) + (blood - 10) * vessels


def _branch(canvas, start, angle, length, width, depth, rng):
    if depth == 0 or width < 0.5:
        return
    end = (start[0] + length * np.cos(angle), start[1] + length * np.sin(angle))
    p0 = (int(round(start[0])), int(round(start[1])))
    p1 = (int(round(end[0])), int(round(end[1])))
    cv2.line(canvas, p0, p1, 1.0, max(1, int(round(width))), lineType=cv2.LINE_AA)
    for turn in (-1, 1):
        _branch(
            canvas,
            end,
            angle + turn * rng.uniform(0.3, 0.7),
            length * rng.uniform(0.6, 0.8),
            width * 0.7,
            depth - 1,
            rng,
        )


def _paint_nodule(img, lung, nodule: NoduleOnSlice, spacing, rng):
    """Blend a nodule into the slice inside its bounding box (fast even on 512 x 512 slices)."""
    coverage = np.mean([m.astype(np.float32) for m in nodule.reader_masks], axis=0)
    rows, cols = np.nonzero(coverage)
    if len(rows) == 0:
        return
    pad = int(np.ceil(4.0 / spacing)) + 2
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, img.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, img.shape[1])
    cover = coverage[r0:r1, c0:c1]
    inside = (cover > 0).astype(np.uint8)
    depth = cv2.distanceTransform(np.pad(inside, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    depth /= max(float(depth.max()), 1e-6)  # 0 at the edge, 1 at the deepest point

    halo, core = TEXTURE_HU[int(np.clip(nodule.texture, 1, 5))]
    core_fraction = TEXTURE_CORE[int(np.clip(nodule.texture, 1, 5))]
    target = np.where(depth >= 1 - core_fraction, core, halo).astype(np.float32)
    target += cv2.GaussianBlur(rng.standard_normal(target.shape).astype(np.float32), (0, 0), 1.0) * 25.0
    contrast = SUBTLETY_CONTRAST[int(np.clip(nodule.subtlety, 1, 5))]
    target = LUNG_HU + contrast * (target - LUNG_HU)
    target = _add_calcium(target, depth, nodule.calcification, rng)

    sigma = MARGIN_BLUR_MM[int(np.clip(nodule.margin, 1, 5))] / spacing
    alpha = cv2.GaussianBlur(cover.astype(np.float32), (0, 0), max(sigma, 0.3))
    region = img[r0:r1, c0:c1]
    blended = region * (1 - alpha) + target * alpha
    in_lung = lung[r0:r1, c0:c1]
    # Inside the lung the nodule replaces parenchyma; where it meets the chest wall, tissue stays as dense.
    img[r0:r1, c0:c1] = np.where(in_lung, blended, np.maximum(region, blended))


def _add_calcium(target, depth, calcification, rng):
    """Calcification rating: 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent."""
    if calcification == 3:
        return np.where(depth > 0.15, CALCIUM_HU, target)
    if calcification == 5:
        return np.where(depth > 0.6, CALCIUM_HU, target)
    if calcification == 2:
        rings = (np.abs(depth - 0.35) < 0.08) | (np.abs(depth - 0.75) < 0.08)
        return np.where(rings, CALCIUM_HU * 0.8, target)
    if calcification in (1, 4):
        out = target.copy()
        ys, xs = np.nonzero(depth > (0.3 if calcification == 1 else 0.2))
        if len(ys) == 0:
            return out
        blobs = rng.integers(3, 6) if calcification == 1 else 1
        radius = max(1, int(np.sqrt(len(ys)) * (0.12 if calcification == 1 else 0.25)))
        canvas = np.zeros(target.shape, np.uint8)
        for i in rng.choice(len(ys), size=min(blobs, len(ys)), replace=False):
            cv2.circle(canvas, (int(xs[i]), int(ys[i])), radius, 1, -1)
        return np.where(canvas > 0, CALCIUM_HU, out)
    return target


def rasterize(contours, size: int) -> np.ndarray:
    """Fill inclusion contours and cut out exclusion contours (LIDC marks holes that way)."""
    mask = np.zeros((size, size), np.uint8)
    for contour in contours:
        if contour.inclusion:
            cv2.fillPoly(mask, [contour.xy.reshape(-1, 1, 2)], 1)
    for contour in contours:
        if not contour.inclusion:
            cv2.fillPoly(mask, [contour.xy.reshape(-1, 1, 2)], 0)
            cv2.polylines(mask, [contour.xy.reshape(-1, 1, 2)], True, 1)  # the boundary itself is nodule
    return mask.astype(bool)


def crop_around(
    image: np.ndarray, center_xy, pixel_spacing: float, fov_mm: float, out_size: int, fill, nearest
):
    """Resample a fixed field of view (mm) around a point to out_size x out_size pixels."""
    scale = pixel_spacing * out_size / fov_mm  # output pixels per input pixel
    cx, cy = center_xy
    half = (out_size - 1) / 2.0
    matrix = np.array([[scale, 0, half - scale * cx], [0, scale, half - scale * cy]], np.float32)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(
        image, matrix, (out_size, out_size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )
