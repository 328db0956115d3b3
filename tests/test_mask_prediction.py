"""`to_native`: a model-resolution map goes back onto its image's own pixels, for every geometry the
preprocessing has (a plain resize, a centre crop, resampling to a fixed pixel spacing with a crop or pad)."""

import numpy as np
import pytest

from lungnet.data.preprocessing import PreprocessConfig, preprocess_image
from lungnet.errors import ConfigError
from lungnet.studies.mask_prediction import to_native


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float32)


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def geometry(**fields) -> PreprocessConfig:
    # intensity steps off: a 0/1 image stays a 0/1 map, so only the geometry acts on it
    return PreprocessConfig(image_size=32, sigmoid_gain=None, channels=1, **fields)


GEOMETRIES = {
    "resize": (geometry(), None),
    "centre crop": (geometry(center_crop=48), None),
    "finer spacing, cropped": (geometry(pixel_spacing_mm=0.5, center_crop=64), 0.7),
    "coarser spacing, padded": (geometry(pixel_spacing_mm=1.5, center_crop=64), 0.7),
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_mask_seen_by_the_model_maps_back_onto_its_image(geometry):
    config, spacing = GEOMETRIES[geometry]
    shape = (90, 70)  # not square, not a multiple of the model's size
    truth = disc(shape, (47, 33), 12)
    seen = preprocess_image(truth, config, spacing).numpy()[..., 0]  # the model's view of the image
    assert seen.shape == (32, 32) and seen.sum() > 0
    back = to_native(seen, shape, config, spacing)
    assert back.shape == shape
    assert iou(back >= 0.5, truth > 0) > 0.8
    # the centres agree to a pixel: no shift from the crop, the pad or the rounding
    centre = np.argwhere(back >= 0.5).mean(axis=0)
    np.testing.assert_allclose(centre, np.argwhere(truth > 0).mean(axis=0), atol=1.0)


def test_outside_the_field_of_view_is_zero():
    config = geometry(center_crop=40)
    back = to_native(np.ones((32, 32), np.float32), (100, 60), config)
    assert back[30:70, 10:50].min() == 1.0 and back.sum() == 40 * 40  # the central 40 x 40 only


def test_a_resampling_model_needs_the_images_spacing():
    config = geometry(pixel_spacing_mm=0.5, center_crop=64)
    with pytest.raises(ConfigError, match="needs the image's own pixel spacing"):
        to_native(np.zeros((32, 32), np.float32), (64, 64), config, None)
