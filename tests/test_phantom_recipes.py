"""The `cpu-phantom` profiles: the real-CT recipe on the embedded phantom's crops and whole slices."""

import numpy as np

from lungnet.experiment import load_experiment, resolve_experiment_path


def _phantom_data(tiny_phantom_config, experiment: str):
    from lungnet.data.dataset import prepare_data

    config = load_experiment(
        resolve_experiment_path(experiment),
        profile="cpu-phantom",
        overrides={"data": {"phantom": {"cache_dir": tiny_phantom_config.cache_dir, "max_patients": 12}}},
    )
    return config, prepare_data(config.data, progress=False)


def test_the_phantom_profiles_keep_each_cell_on_its_own_view():
    crops = load_experiment(resolve_experiment_path("five_class_nodule"), profile="cpu-phantom")
    assert crops.data.view == "crop" and crops.training.monitor == "val_f1_macro"
    assert (crops.data.preprocess.center_crop, crops.data.preprocess.image_size) == (64, 64)
    assert crops.data.preprocess.pixel_spacing_mm is None and crops.models[0].ensemble == 3
    slices = load_experiment(resolve_experiment_path("binary_full"), profile="cpu-phantom")
    pre = slices.data.preprocess
    assert slices.data.view == "full" and (pre.pixel_spacing_mm, pre.center_crop, pre.image_size) == (
        2.8,
        128,
        128,
    )
    assert slices.training.monitor == "val_auc" and slices.models[0].ensemble == 2
    assert (
        load_experiment(resolve_experiment_path("five_class_full"), profile="cpu-phantom").data.view == "full"
    )


def test_phantom_crops_use_one_fixed_hounsfield_window(tiny_phantom_config):
    """[-1000, 400] HU to [0, 1] in every crop alike (not per-image min-max): a crop's centre 64 px are its
    own pixels, clipped and scaled, so the same density is the same value in every image."""
    from lungnet.data.dataset import image_column
    from lungnet.data.io import read_image

    config, data = _phantom_data(tiny_phantom_config, "binary_nodule")
    images, _ = next(iter(data.val))
    val = data.split("val")
    column = image_column(val, config.data.view)
    for k in range(3):
        hu = np.asarray(read_image(val[column].iloc[k]), np.float32).squeeze()
        side = hu.shape[0]
        centre = hu[(side - 64) // 2 : (side + 64) // 2, (side - 64) // 2 : (side + 64) // 2]
        expected = (np.clip(centre, -1000, 400) + 1000) / 1400
        np.testing.assert_allclose(images[k, ..., 0].numpy(), expected, atol=1e-5)


def test_phantom_whole_slices_come_at_one_physical_scale(tiny_phantom_config):
    """Each slice resampled from its scan's spacing to 2.8 mm per pixel, 128 px (358 mm): the body's edge lies
    inside the field, with air (0) around it, whatever the scan's own spacing."""
    config, data = _phantom_data(tiny_phantom_config, "binary_full")
    images, _ = next(iter(data.val))
    images = images.numpy()
    assert images.shape[1:] == (128, 128, 3) and images.min() >= 0.0 and images.max() <= 1.0
    body = (images[..., 0] > 0.5).mean(axis=(1, 2))  # above -300 HU: soft tissue and bone
    assert np.all((body > 0.1) & (body < 0.9)), body
    assert np.all(images[:, :3, :3, 0] < 0.05)  # corners: air or padding
