"""Intensity perturbations: exact effects, seeded noise, clipping, the default conditions, the robustness std."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from lungnet.errors import ConfigError, DataError
from lungnet.evaluation.perturbations import (
    DEFAULT_PERTURBATIONS,
    Perturbation,
    intensity_std,
    perturb_image,
    value_range_for,
)

CT = value_range_for("ct")
EIGHT_BIT = value_range_for("8bit")
IMAGE = tf.constant([[0.0, 10.0], [20.0, 30.0]])


def test_value_ranges():
    assert CT == (-1000.0, 400.0) and EIGHT_BIT == (0.0, 255.0)
    with pytest.raises(ConfigError, match="mri"):
        value_range_for("mri")


def test_original_and_brightness_exact():
    np.testing.assert_array_equal(perturb_image(IMAGE, DEFAULT_PERTURBATIONS[0], CT, seed=0), IMAGE)
    up = perturb_image(IMAGE, Perturbation("b", "brightness", 0.10), CT, seed=0)
    np.testing.assert_allclose(up, IMAGE.numpy() + 140.0)  # 0.10 * (400 - -1000)
    down = perturb_image(IMAGE, Perturbation("b", "brightness", -0.10), EIGHT_BIT, seed=0)
    np.testing.assert_allclose(down, IMAGE.numpy() - 25.5)  # 0.10 * 255


def test_contrast_about_the_image_mean():
    out = perturb_image(IMAGE, Perturbation("c", "contrast", 0.8), CT, seed=0)
    np.testing.assert_allclose(out, [[3.0, 11.0], [19.0, 27.0]], atol=1e-5)  # 15 + (x - 15) * 0.8
    out = perturb_image(IMAGE, Perturbation("c", "contrast", 1.2), CT, seed=0)
    np.testing.assert_allclose(out, [[-3.0, 9.0], [21.0, 33.0]], atol=1e-5)  # 15 + (x - 15) * 1.2


def test_noise_std_and_seeding():
    flat = tf.fill([256, 256], 100.0)
    p = Perturbation("n", "noise", 0.02)
    a = perturb_image(flat, p, EIGHT_BIT, seed=7).numpy()
    assert np.std(a - 100.0) == pytest.approx(0.02 * 255, rel=0.03)  # sigma = 5.1
    assert abs(np.mean(a - 100.0)) < 0.1
    np.testing.assert_array_equal(a, perturb_image(flat, p, EIGHT_BIT, seed=7))
    assert not np.array_equal(a, perturb_image(flat, p, EIGHT_BIT, seed=8).numpy())
    b = perturb_image(flat, Perturbation("n", "noise", 0.05), EIGHT_BIT, seed=7).numpy()
    np.testing.assert_allclose(b - 100.0, (a - 100.0) * 2.5, rtol=1e-4, atol=1e-3)  # one pattern, two scales


def test_clip_to_value_range():
    img = tf.constant([[5.0, 250.0]])
    up = perturb_image(img, Perturbation("b", "brightness", 0.10), EIGHT_BIT, seed=0, clip=True)
    np.testing.assert_allclose(up, [[30.5, 255.0]])
    noisy = perturb_image(tf.zeros([64, 64]), Perturbation("n", "noise", 0.05), EIGHT_BIT, seed=1, clip=True)
    assert float(tf.reduce_min(noisy)) == 0.0 and float(tf.reduce_max(noisy)) <= 255.0
    unclipped = perturb_image(tf.zeros([64, 64]), Perturbation("n", "noise", 0.05), EIGHT_BIT, seed=1)
    assert float(tf.reduce_min(unclipped)) < 0.0


def test_default_conditions():
    names = [p.name for p in DEFAULT_PERTURBATIONS]
    assert len(names) == 7 and len(set(names)) == 7 and "original" in names
    assert sorted(p.kind for p in DEFAULT_PERTURBATIONS).count("contrast") == 2
    assert {(p.kind, p.amount) for p in DEFAULT_PERTURBATIONS} == {
        ("none", 0.0),
        ("brightness", 0.10),
        ("brightness", -0.10),
        ("contrast", 0.8),
        ("contrast", 1.2),
        ("noise", 0.02),
        ("noise", 0.05),
    }


def test_perturbation_validation():
    with pytest.raises(ConfigError, match="kind"):
        Perturbation("blur", "blur", 1.0)
    with pytest.raises(ConfigError, match="contrast"):
        Perturbation("c0", "contrast", 0.0)
    with pytest.raises(ConfigError, match="amount"):
        Perturbation("n", "noise", math.nan)


def test_intensity_std_is_population_std():
    dice = {"original": 0.8, "brightness+10%": 0.7, "noise 5%": 0.9}
    # mean 0.8; deviations 0, -0.1, 0.1 -> variance (0 + 0.01 + 0.01) / 3 -> std 0.0816 (ddof=1 would be 0.1)
    assert intensity_std(dice) == pytest.approx(math.sqrt(0.02 / 3))
    assert intensity_std({"original": 0.5}) == 0.0
    with pytest.raises(DataError, match="noise"):
        intensity_std({"original": 0.5, "noise": math.nan})


def test_inside_tf_data_map():
    images = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    seeds = np.arange(3, dtype=np.int64)
    for p in DEFAULT_PERTURBATIONS:
        ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
            lambda x, s, p=p: perturb_image(x, p, EIGHT_BIT, seed=s, clip=True)
        )
        got = np.stack([x.numpy() for x in ds])
        want = np.stack([perturb_image(images[i], p, EIGHT_BIT, seed=i, clip=True).numpy() for i in range(3)])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
