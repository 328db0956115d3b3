"""Models Genesis image transforms (Zhou et al., MICCAI 2019; MedIA 2021), for 2-D slices and 2.5-D stacks.

A restoration model learns to undo them: the input is the transformed slice, the target the original (after
the same random flips). Per image, in this order, as the paper and its reference code apply them:

1. **flips**: while ``rand < flip_rate`` (at most 3 times), flip input and target along a random spatial axis;
2. **local pixel shuffling** (probability ``local_rate``): ``local_blocks`` windows, each of random size
   ``1..H//10 x 1..W//10`` at a random place, have their pixels permuted (read from the original image);
3. **non-linear intensity** (probability ``nonlinear_rate``): a monotonic Bezier curve through (0, 0), two
   random control points and (1, 1) maps every intensity; half the time the curve is reversed (decreasing);
4. **painting** (probability ``paint_rate``): inner cut-out (in-painting, share ``inpaint_rate``): up to 5
   boxes (each drawn while ``rand < 0.95``) of side ``H//6..H//3`` at least 3 px from the border are filled
   with uniform noise; otherwise outer cut-out (out-painting): the image is replaced by noise except for a
   box of side ``H - randint(3H//7, 4H//7)`` and up to 4 more boxes of the same kind.

The reference works on 3-D cubes (64 x 64 x 32, 10,000 shuffled blocks); here the channels of a slice (its
grey copies, or the slices below and above in 2.5-D input) move together as the depth of a thin cube, so
each operation acts on the spatial axes and all channels at once, and the number of shuffled blocks scales
with the pixel count (10,000 x H x W / (64 x 64 x 32), at least 1). Intensities must be in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import comb

from lungnet.errors import ConfigError

REFERENCE_CUBE_VOXELS = 64 * 64 * 32  # the reference implementation's sub-volume
REFERENCE_BLOCKS = 10_000


@dataclass(frozen=True)
class GenesisConfig:
    """The transform probabilities of the reference configuration (``models_genesis_config``)."""

    flip_rate: float = 0.4
    local_rate: float = 0.5
    nonlinear_rate: float = 0.9
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2  # of painted images; the others are out-painted (the reference's 0.8)
    local_blocks: int | None = None  # None: scaled from the reference's 10,000 per 64 x 64 x 32 cube
    # samples of the Bezier curve that np.interp reads (the reference takes 100,000; the cubic is smooth, so
    # 1,000 give the same mapping to about 1e-6, at a tenth of the time)
    curve_points: int = 1_000

    def __post_init__(self) -> None:
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate", "inpaint_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"pretraining.genesis.{name}: {value!r} must be a probability in [0, 1]")
        if self.local_blocks is not None and self.local_blocks < 1:
            raise ConfigError(f"pretraining.genesis.local_blocks: {self.local_blocks} must be >= 1 (or null)")
        if self.curve_points < 10:
            raise ConfigError(f"pretraining.genesis.curve_points: {self.curve_points} must be >= 10")

    def blocks_for(self, height: int, width: int) -> int:
        if self.local_blocks is not None:
            return self.local_blocks
        return max(1, round(REFERENCE_BLOCKS * height * width / REFERENCE_CUBE_VOXELS))


def _integer(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer in [low, high], both included (Python's random.randint, as the reference uses)."""
    return int(rng.integers(low, high + 1))


def random_flips(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, rate: float):
    """Flip input and target together along random spatial axes, while ``rand < rate``, at most 3 times."""
    for _ in range(3):
        if rng.random() >= rate:
            break
        axis = int(rng.integers(0, 2))
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
    return x, y


def bezier_curve(points: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The Bezier curve of control points `points` [n, 2], at `samples` values of t from 0 to 1.

    As in the reference, the i-th Bernstein polynomial weights the points in reverse order (t = 0 gives the
    last point), which only reverses the direction the curve is traced in.
    """
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, samples)
    basis = np.stack([comb(n, i) * t ** (n - i) * (1 - t) ** i for i in range(n + 1)])
    return points[:, 0] @ basis, points[:, 1] @ basis


def nonlinear_intensity(x: np.ndarray, rng: np.random.Generator, samples: int = 1_000) -> np.ndarray:
    """Map intensities through a random monotonic Bezier curve from (0, 0) to (1, 1); half the time the
    x values alone are sorted, which makes the mapping decreasing (an inverted image)."""
    points = np.array([[0.0, 0.0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1.0, 1.0]])
    xs, ys = bezier_curve(points, samples)
    if rng.random() < 0.5:
        xs = np.sort(xs)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys).astype(x.dtype)


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator, blocks: int) -> np.ndarray:
    """`blocks` random windows (``1..H//10 x 1..W//10``) of the original image, each with its pixels
    permuted (a pixel keeps its channel values together), written into a copy."""
    height, width = x.shape[:2]
    out = x.copy()
    hs = rng.integers(1, max(1, height // 10) + 1, size=blocks)
    ws = rng.integers(1, max(1, width // 10) + 1, size=blocks)
    rs = (rng.random(blocks) * (height - hs + 1)).astype(int)  # uniform in [0, height - h]
    cs = (rng.random(blocks) * (width - ws + 1)).astype(int)
    for h, w, r, c in zip(hs.tolist(), ws.tolist(), rs.tolist(), cs.tolist(), strict=True):
        window = x[r : r + h, c : c + w].reshape(h * w, -1)
        out[r : r + h, c : c + w] = window[rng.permutation(h * w)].reshape(h, w, -1)
    return out


def _box(rng: np.random.Generator, height: int, width: int, sides) -> tuple[slice, slice]:
    """A box of the given side ranges, at least 3 px from every border (the reference's margins)."""
    h, w = sides(height), sides(width)
    r, c = _integer(rng, 3, height - h - 3), _integer(rng, 3, width - w - 3)
    return slice(r, r + h), slice(c, c + w)


def _check_paintable(height: int, width: int) -> None:
    if min(height, width) < 14:
        raise ConfigError(
            f"Models Genesis painting needs images of at least 14 px a side, got {height}x{width}"
        )


def inner_cutout(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """In-painting: up to 5 boxes of side ``S//6..S//3`` filled with uniform noise (each while rand < 0.95)."""
    height, width = x.shape[:2]
    _check_paintable(height, width)
    out = x.copy()
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        rows, cols = _box(rng, height, width, lambda s: _integer(rng, s // 6, s // 3))
        out[rows, cols] = rng.random(out[rows, cols].shape)
    return out


def outer_cutout(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out-painting: uniform noise everywhere except a box of side ``S - randint(3S//7, 4S//7)`` of the image,
    and up to 4 more such boxes (each while rand < 0.95)."""
    height, width = x.shape[:2]
    _check_paintable(height, width)
    out = rng.random(x.shape).astype(x.dtype)

    def side(s: int) -> int:
        return s - _integer(rng, 3 * s // 7, 4 * s // 7)

    for i in range(5):
        if i > 0 and rng.random() >= 0.95:
            break
        rows, cols = _box(rng, height, width, side)
        out[rows, cols] = x[rows, cols]
    return out


def genesis_pair(
    image: np.ndarray, rng: np.random.Generator, config: GenesisConfig = GenesisConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """(transformed input, restoration target) for one image [H, W, C] in [0, 1]."""
    x, y = random_flips(image, image, rng, config.flip_rate)
    if rng.random() < config.local_rate:
        x = local_pixel_shuffle(x, rng, config.blocks_for(*x.shape[:2]))
    if rng.random() < config.nonlinear_rate:
        x = nonlinear_intensity(x, rng, config.curve_points)
    if rng.random() < config.paint_rate:
        x = inner_cutout(x, rng) if rng.random() < config.inpaint_rate else outer_cutout(x, rng)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)
