"""Where a segmentation training step's time goes on the CPU: the cpu-real-augmented U-Net's forward pass
against its training step (with the study's loss and IoU metric, and with plain MSE), then single layers at
the U-Net's sizes, forward against training (gradient + Adam update), batch 16.

Usage (from the repository root): .venv/bin/python docs/real-ct/analysis/segmentation_step_profile.py
(env REPEATS, default 15). Synthetic inputs: only the arithmetic is timed."""

import os
import time

import keras
import numpy as np
from keras import layers

from lungnet.experiment import load_experiment
from lungnet.losses import build_loss
from lungnet.models import build_segmenter
from lungnet.studies.segmentation import compile_segmentation

REPEATS = int(os.environ.get("REPEATS", "15"))
BATCH = 16


def seconds_per_call(fn, *args) -> float:
    fn(*args)
    fn(*args)
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn(*args)
    return (time.perf_counter() - start) / REPEATS


def unet_rows() -> None:
    config = load_experiment("experiments/attention_unet.yaml", "cpu-real-augmented", {})
    spec = next(m for m in config.models if m.name == "unet")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 128, 128, 1)).astype("float32")
    y = (rng.random((BATCH, 128, 128, 1)) > 0.9).astype("float32")
    for variant in ("predict", "study loss + IoU", "study loss", "mse"):
        model = build_segmenter(spec.model, input_shape=(128, 128, 1))
        if variant == "study loss + IoU":
            compile_segmentation(config.loss)(model, 1e-3, config.training)
        elif variant == "study loss":
            model.compile(optimizer="adam", loss=build_loss(config.loss))
        elif variant == "mse":
            model.compile(optimizer="adam", loss="mse")
        step = (model.predict_on_batch, x) if variant == "predict" else (model.train_on_batch, x, y)
        print(
            f"U-Net depth 4, 16 filters, 128 px, {variant:17s}: {BATCH / seconds_per_call(*step):6.1f} images/s"
        )


def layer_rows() -> None:
    def conv_bn_relu(i):
        return layers.ReLU()(
            layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(i))
        )

    cases = {
        "conv 3x3 16->16 at 128 px": (lambda i: layers.Conv2D(16, 3, padding="same")(i), (128, 128, 16)),
        "conv 3x3 16->16 + BN + ReLU": (conv_bn_relu, (128, 128, 16)),
        "conv 3x3 1->16 at 128 px": (lambda i: layers.Conv2D(16, 3, padding="same")(i), (128, 128, 1)),
        "transposed conv 2x2 32->16 at 64 px": (
            lambda i: layers.Conv2DTranspose(16, 2, strides=2)(i),
            (64, 64, 32),
        ),
        "max pool at 128 px, 16 channels": (lambda i: layers.MaxPooling2D()(i), (128, 128, 16)),
        "conv 3x3 128->128 at 16 px": (lambda i: layers.Conv2D(128, 3, padding="same")(i), (16, 16, 128)),
    }
    for name, (build, shape) in cases.items():
        inputs = keras.Input(shape)
        model = keras.Model(inputs, build(inputs))
        model.compile(optimizer="adam", loss="mse")
        x = np.random.rand(BATCH, *shape).astype("float32")
        y = np.random.rand(BATCH, *model.output_shape[1:]).astype("float32")
        forward = seconds_per_call(model.predict_on_batch, x) * 1000
        train = seconds_per_call(model.train_on_batch, x, y) * 1000
        print(f"{name:38s} forward {forward:6.1f} ms, training {train:6.1f} ms ({train / forward:.1f}x)")


if __name__ == "__main__":
    unet_rows()
    layer_rows()
