"""Intensity perturbations of raw images (TensorFlow ops, usable inside ``tf.data``) and the study's robustness std.

"Std under intensity variation" is defined here as the population standard deviation (ddof = 0) of the mean
test Dice over a fixed set of conditions, `DEFAULT_PERTURBATIONS`:

- the unperturbed images ("original");
- brightness +-10 % of the intensity range: x + a (hi - lo), a = +-0.10;
- contrast x0.8 and x1.2 about the image mean: m + (x - m) c, m = mean of that image;
- Gaussian noise with sigma 2 % and 5 % of the range: x + N(0, (s (hi - lo))^2), s = 0.02, 0.05.

Each is applied to the RAW image in native units (HU for CT, 0-255 for 8-bit sources) before any
preprocessing, with ``value_range`` = `value_range_for` the source kind. The noise is drawn with
``tf.random.stateless_normal`` from a per-image seed, so a condition is the same on every run, and the two
noise levels share one noise pattern at different scales (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tensorflow as tf

from lungnet.errors import ConfigError, DataError

PerturbationKind = Literal["none", "brightness", "contrast", "noise"]
_KINDS = ("none", "brightness", "contrast", "noise")


@dataclass(frozen=True)
class Perturbation:
    """One intensity condition. ``amount``: brightness shift and noise sigma as fractions of the value range,
    contrast as a factor about the image mean; 0 for "none"."""

    name: str
    kind: PerturbationKind
    amount: float

    def __post_init__(self):
        where = f"perturbation {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"perturbation name: expected a non-empty string, got {self.name!r}")
        if self.kind not in _KINDS:
            raise ConfigError(f"{where}.kind: {self.kind!r} is not one of {list(_KINDS)}")
        if (
            isinstance(self.amount, bool)
            or not isinstance(self.amount, int | float)
            or not math.isfinite(self.amount)
        ):
            raise ConfigError(f"{where}.amount: expected a finite number, got {self.amount!r}")
        if self.kind == "none" and self.amount != 0:
            raise ConfigError(f"{where}.amount: must be 0 for kind 'none', got {self.amount!r}")
        if self.kind == "brightness" and not -1.0 <= self.amount <= 1.0:
            raise ConfigError(
                f"{where}.amount: a brightness shift is a fraction of the range in [-1, 1], got {self.amount!r}"
            )
        if self.kind == "contrast" and self.amount <= 0:
            raise ConfigError(f"{where}.amount: a contrast factor must be > 0, got {self.amount!r}")
        if self.kind == "noise" and self.amount < 0:
            raise ConfigError(
                f"{where}.amount: a noise sigma (fraction of the range) must be >= 0, got {self.amount!r}"
            )


DEFAULT_PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("original", "none", 0.0),
    Perturbation("brightness+10%", "brightness", 0.10),
    Perturbation("brightness-10%", "brightness", -0.10),
    Perturbation("contrast x0.8", "contrast", 0.8),
    Perturbation("contrast x1.2", "contrast", 1.2),
    Perturbation("noise 2%", "noise", 0.02),
    Perturbation("noise 5%", "noise", 0.05),
)


def value_range_for(kind: Literal["ct", "8bit"]) -> tuple[float, float]:
    """Intensity range of a source: CT -> (-1000, 400) HU (the study's HU clip), 8-bit -> (0, 255)."""
    ranges = {"ct": (-1000.0, 400.0), "8bit": (0.0, 255.0)}
    if kind not in ranges:
        raise ConfigError(f"value range kind: {kind!r} is not one of {list(ranges)}")
    return ranges[kind]


def _check_range(value_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"value_range: expected (low, high), got {value_range!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"value_range: expected finite low < high, got {value_range!r}")
    return lo, hi


def perturb_image(
    image: tf.Tensor, p: Perturbation, value_range: tuple[float, float], seed, clip: bool = False
) -> tf.Tensor:
    """Apply ``p`` to a raw image [H, W] (any shape works; float32 out); see the module docstring.

    ``seed``: an int or int tensor fixed per image (e.g. its index), used as the stateless seed [seed, 0].
    ``clip``: clip the result to ``value_range``; use it for 8-bit sources, where 0-255 is all there is (CT
    values outside the HU window are clipped later by preprocessing anyway).
    """
    lo, hi = _check_range(value_range)
    x = tf.cast(image, tf.float32)
    span = hi - lo
    if p.kind == "brightness":
        x = x + p.amount * span
    elif p.kind == "contrast":
        mean = tf.reduce_mean(x)
        x = mean + (x - mean) * p.amount
    elif p.kind == "noise":
        stateless_seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        x = x + tf.random.stateless_normal(tf.shape(x), seed=stateless_seed, stddev=p.amount * span)
    if clip:
        x = tf.clip_by_value(x, lo, hi)
    return x


def intensity_std(dice_by_condition: Mapping[str, float]) -> float:
    """Population std (ddof = 0) of the mean test Dice over the conditions (e.g. the 7 default ones)."""
    if len(dice_by_condition) == 0:
        raise DataError("dice_by_condition is empty (need one mean Dice per condition)")
    values = []
    for name, v in dice_by_condition.items():
        v = float(v)
        if not math.isfinite(v):
            raise DataError(f"dice_by_condition[{name!r}] = {v} is not a finite Dice")
        values.append(v)
    return float(np.std(values, ddof=0))
