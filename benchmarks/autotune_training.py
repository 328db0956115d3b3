"""Does tf.data autotuning stretch training on this CPU? `make bench-autotune`.

Stop 45 found epochs of the input pipeline alone stretched, with the process idle, to multiples of about
2.57 s when tf.data's autotuning was on (mostly on one core). This trains each study's first `cpu-real` model
through lungnet's one fit path (`train_phase`, its real pipeline, real LIDC crops) with autotuning on and off,
in alternating child processes, and records wall time, process CPU time and the idle share
(1 - CPU / (wall x cores)) of each run. Training on 2 cores is the case that matters: the model, not the
pipeline, should set the pace.

JSON: ``benchmarks/results/autotune_training.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lungnet.fileio import write_json  # noqa: E402  (imports without TensorFlow)
from lungnet.machine import cpu_description, usable_cpus  # noqa: E402

CROPS = ROOT.parent / "shared" / "data" / "lidc-crops"
RESULT = ROOT / "benchmarks" / "results" / "autotune_training.json"
STUDIES = ("binary_nodule", "attention_unet")


def _phase_inputs(study: str, config):
    """(model, train, val, compile_fn) of `study`'s experiment `config` and its first model."""
    spec = config.models[0]
    if study == "binary_nodule":
        from lungnet.data.dataset import prepare_data
        from lungnet.models import build_classifier
        from lungnet.studies.classification import input_shape

        data = prepare_data(config.data, progress=False)
        model = build_classifier(spec.model, input_shape(config), len(data.class_names))
        return model, data.train, data.val, None
    from lungnet.data.segmentation import prepare_segmentation_data
    from lungnet.studies.segmentation import build_study_segmenter, compile_segmentation

    data = prepare_segmentation_data(config.data, progress=False)
    model = build_study_segmenter(spec.model, config, data)
    return model, data.train, data.val, compile_segmentation(config.loss)


def child(study: str, data_source: str, autotune: bool, epochs: int, out: Path) -> None:
    """One training phase in this process (TensorFlow starts fresh for each setting)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lungnet.experiment import load_experiment, resolve_experiment_path
    from lungnet.training.fit import set_global_options, train_phase

    config = load_experiment(resolve_experiment_path(study), "cpu-real", {"data": {"source": data_source}})
    set_global_options(config.training)  # seeds: both settings train the same model on the same batches
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model, train, val, compile_fn = _phase_inputs(study, config)
    prepared_wall, prepared_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    training = dataclasses.replace(config.training, epochs=epochs, verbose=0, data_autotune=autotune)
    with tempfile.TemporaryDirectory(prefix="lungnet-autotune-") as run_dir:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        summary = train_phase(
            model,
            train,
            val,
            run_dir=run_dir,
            phase=study,
            epochs=epochs,
            learning_rate=training.learning_rate,
            config=training,
            compile_fn=compile_fn,
        )
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    cores = usable_cpus()
    images = summary["epochs_run"] * training.steps_per_epoch * config.data.batch_size
    write_json(
        out,
        {
            "study": study,
            "model": config.models[0].name,
            "autotune": autotune,
            "epochs_run": summary["epochs_run"],
            "training_images": images,
            "data_preparation_seconds": round(prepared_wall, 1),
            "data_preparation_cpu_seconds": round(prepared_cpu, 1),
            "training_seconds": round(wall, 1),
            "training_cpu_seconds": round(cpu, 1),
            "training_images_per_s": round(images / wall, 1),
            "idle_share": round(1 - cpu / (wall * cores), 3),
            "cores": cores,
        },
    )


def run_child(study: str, data_source: str, autotune: bool, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lungnet-autotune-result-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, __file__, "--child", study, "--data", data_source, "--epochs", str(epochs)]
        argv += ["--output", str(out)] + ([] if autotune else ["--no-autotune"])
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            return {"study": study, "autotune": autotune, "error": done.stderr[-2000:]}
        return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    """Per study and setting: the median training seconds, CPU seconds and idle share of the runs."""
    table = {}
    for study in dict.fromkeys(r["study"] for r in runs):
        for autotune in (True, False):
            done = [r for r in runs if r["study"] == study and r["autotune"] is autotune and "error" not in r]
            if done:
                table.setdefault(study, {})["on" if autotune else "off"] = {
                    key: statistics.median(r[key] for r in done)
                    for key in (
                        "training_seconds",
                        "training_cpu_seconds",
                        "training_images_per_s",
                        "idle_share",
                    )
                } | {"runs": len(done)}
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(CROPS), help="lidc-crops folder (default: ../shared/data/lidc-crops)"
    )
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (the profile's steps per epoch)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating on / off")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--child", choices=STUDIES, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-autotune", dest="autotune", action="store_false", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.data, args.autotune, args.epochs, args.output)
        return 0
    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data}: no such folder (the real LIDC crops this benchmark trains on)")
    runs = []
    for study in args.studies:
        for _ in range(args.repeats):
            for autotune in (True, False):
                runs.append(run_child(study, args.data, autotune, args.epochs))
                print(json.dumps(runs[-1]), flush=True)
    result = {"machine": cpu_description(), "epochs": args.epochs, "summary": summarise(runs), "runs": runs}
    write_json(args.out, result)
    print(json.dumps(result["summary"], indent=1))
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
