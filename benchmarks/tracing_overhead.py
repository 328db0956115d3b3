"""What graph tracing costs lungnet on this machine, with and without the two measures against it:

- a fit: notebook 04's smoke Inf-Net phase (19 labelled phantom slices at 32 / 64 / 96 px, 2 epochs) through
  `train_phase`, with the training state built before `fit` (`build_training_state`, one trace of the step)
  and without it (Keras creates the optimizer's variables inside the first trace: two traces);
- an export: `ExportArchive.write_out` of EfficientNetB2 at 32 px, with lungnet's `SAVE_OPTIONS` (no
  gradient-function traces) and with TensorFlow's defaults.

Each variant runs ``--repeats`` times, alternating, in one process (the first run of all also pays for
imports and kernel set-up, so the medians are reported beside every run).

Result: ``benchmarks/results/tracing_overhead.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from lungnet.data.segmentation import prepare_segmentation_data  # noqa: E402
from lungnet.experiment import load_experiment, resolve_experiment_path  # noqa: E402
from lungnet.machine import cpu_description  # noqa: E402
from lungnet.models import CLASSIFIERS, inference_model  # noqa: E402
from lungnet.serving.export import SAVE_OPTIONS  # noqa: E402
from lungnet.studies.segmentation import build_study_segmenter, compile_segmentation  # noqa: E402
from lungnet.training import fit  # noqa: E402
from lungnet.training.multiscale import multiscale_training  # noqa: E402
from lungnet.training.pseudo_labels import split_label_budget  # noqa: E402


def time_fit(prebuilt: bool) -> dict:
    config = load_experiment(resolve_experiment_path("inf_net"), profile="smoke")
    data = prepare_segmentation_data(config.data, progress=False)
    labelled, _ = split_label_budget(data.split("train"), config.labels)
    spec = config.models[0]
    model, batches = multiscale_training(
        build_study_segmenter(spec.model, config, data),
        data.pipeline(labelled, training=True),
        spec.multiscale_rates,
        data.preprocess.image_size,
    )
    traces = []
    original = keras.Model.train_step

    def counted(self, batch):
        traces.append(1)  # Python runs only while tf.function traces
        return original(self, batch)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(keras.Model, "train_step", counted))
        if not prebuilt:
            stack.enter_context(mock.patch.object(fit, "build_training_state", lambda model, dataset: None))
        run_dir = stack.enter_context(tempfile.TemporaryDirectory())
        started = time.perf_counter()
        fit.train_phase(
            model,
            batches,
            data.val,
            run_dir=run_dir,
            phase="inf_net",
            epochs=2,
            learning_rate=config.training.learning_rate,
            config=config.training,
            compile_fn=compile_segmentation(config.loss),
        )
        seconds = time.perf_counter() - started
    keras.backend.clear_session()
    return {"seconds": round(seconds, 2), "traces": len(traces)}


def time_export(options) -> dict:
    config = CLASSIFIERS.parse({"name": "efficientnet_b2", "weights": None}, "model")
    model = inference_model(CLASSIFIERS.build(config, (32, 32, 3), 2))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve", lambda images: model(images, training=False), [tf.TensorSpec([None, 32, 32, 3], tf.float32)]
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        archive.write_out(out, options=options, verbose=False)
        seconds = time.perf_counter() - started
    keras.backend.clear_session()
    return {"seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = {
        "fit, training state built first (lungnet)": lambda: time_fit(True),
        "fit, Keras default (built inside the first trace)": lambda: time_fit(False),
        "export, SAVE_OPTIONS (lungnet)": lambda: time_export(SAVE_OPTIONS),
        "export, TensorFlow default": lambda: time_export(None),
    }
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            runs[name].append(run())
            print(f"{name}: {runs[name][-1]}", flush=True)
    result = {
        "cpu": cpu_description(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "runs": runs,
        "median_seconds": {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()},
    }
    out = ROOT / "benchmarks" / "results" / "tracing_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_seconds"], indent=2), f"\n-> {out}")


if __name__ == "__main__":
    main()
