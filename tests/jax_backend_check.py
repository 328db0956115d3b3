"""Run under KERAS_BACKEND=jax (by tests/test_jax_backend.py, in its own process): build each named model
of the zoo from its tiny config, train it for one step and check the loss is finite and the weights moved.
Prints one JSON line per model. TensorFlow cannot be imported here: the GPU machine has none."""

from __future__ import annotations

import json
import sys


class _NoTensorFlow:
    """Make `import tensorflow` fail here, as on the GPU machine (Keras then leaves TensorFlow alone)."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the JAX backend check)")
        return None


sys.meta_path.insert(0, _NoTensorFlow())

import keras  # noqa: E402
import numpy as np  # noqa: E402
from zoo_configs import SIZE, SIZES, TINY  # noqa: E402

from lungnet.models import CLASSIFIERS, SEGMENTERS  # noqa: E402
from lungnet.models.contract import INPUT_NAME, output_names  # noqa: E402

REGISTRIES = {"classification": CLASSIFIERS, "segmentation": SEGMENTERS}
CHANNELS = {"classification": 3, "segmentation": 1}


def check(task: str, name: str) -> dict:
    registry = REGISTRIES[task]
    size = SIZES.get(name, SIZE)
    config = registry.parse({"name": name, **TINY[task].get(name, {})}, "model")
    shape = (size, size, CHANNELS[task])
    model = registry.build(config, shape, *((2,) if task == "classification" else ()))
    rng = np.random.default_rng(0)
    x = {
        t.name: rng.random((2, *shape), dtype=np.float32)
        if t.name == INPUT_NAME
        else rng.random((2, *t.shape[1:]), dtype=np.float32)
        for t in model.inputs
    }
    x = x[INPUT_NAME] if len(x) == 1 else x
    if task == "classification":
        y = np.array([[0.0], [1.0]], np.float32)
    else:
        y = np.zeros((2, size, size, 1), np.float32)
        y[:, size // 4 : size // 2, size // 4 : size // 2] = 1
    names = output_names(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={n: "binary_crossentropy" for n in names} if len(names) > 1 else "binary_crossentropy",
    )
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(x, {n: y for n in names} if len(names) > 1 else y, batch_size=2, epochs=1, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    moved = sum(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    return {
        "task": task,
        "name": name,
        "backend": keras.backend.backend(),
        "loss": float(history.history["loss"][0]),
        "moved": moved,
        "weights": len(before),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    for item in sys.argv[1:]:
        task, _, name = item.partition(":")
        print(json.dumps(check(task, name)), flush=True)
