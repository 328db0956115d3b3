"""Where a cpu-real-augmented segmentation epoch goes: the input pipeline alone, the training step alone, fit on both.

Usage (from the repository root): .venv/bin/python docs/real-ct/analysis/segmentation_step_vs_pipeline.py [LIDC_CROPS_DIR]
(env STEPS, MODEL). Prints images/s of each."""

import json
import os
import sys
import time
from pathlib import Path

import tensorflow as tf

from lungnet.data.segmentation import prepare_segmentation_data
from lungnet.experiment import load_experiment
from lungnet.models import build_segmenter
from lungnet.studies.segmentation import compile_segmentation

steps = int(os.environ.get("STEPS", "30"))
model_name = os.environ.get("MODEL", "unet")
cfg = load_experiment(
    "experiments/attention_unet.yaml",
    "cpu-real-augmented",
    {"data": {"source": str(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/lidc-crops"))}},
)
data = prepare_segmentation_data(cfg.data, progress=False)
train = data.train.repeat()
it = iter(train)
t = time.perf_counter()
next(it)
print("first batch", round(time.perf_counter() - t, 1), "s", flush=True)
# warm cache: one pass over the training split
n_train = int((data.manifest["split"] == "train").sum())
nb = n_train // cfg.data.batch_size + 1
t = time.perf_counter()
for _ in range(nb):
    next(it)
print(f"cache pass {nb} batches {time.perf_counter() - t:.1f}s", flush=True)
t = time.perf_counter()
for _ in range(steps):
    b = next(it)
pipe = steps * cfg.data.batch_size / (time.perf_counter() - t)
print(f"pipeline alone (cached, augmented): {pipe:.1f} images/s", flush=True)
spec = [m for m in cfg.models if m.name == model_name][0]
model = build_segmenter(spec.model, input_shape=(128, 128, 1))
compile_segmentation(cfg.loss)(model, 1e-3, cfg.training)
x, y = b
model.train_on_batch(x, y)
t = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
step = steps * cfg.data.batch_size / (time.perf_counter() - t)
print(f"train step alone ({model_name}): {step:.1f} images/s", flush=True)
model.fit(train, steps_per_epoch=3, epochs=1, verbose=0)
t = time.perf_counter()
model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
both = steps * cfg.data.batch_size / (time.perf_counter() - t)
print(f"fit on the pipeline: {both:.1f} images/s", flush=True)
print(
    json.dumps(
        {
            "pipeline": pipe,
            "step": step,
            "fit": both,
            "threads": [
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            ],
        }
    )
)
