"""The `lungnet` command. Each sub-command is a thin call into the library (the same API notebooks use)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from lungnet.errors import ConfigError, LungnetError


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="lidc-phantom (default embedded data), lidc-idri[:DICOM_ROOT], a manifest .csv, or a folder",
    )
    group = parser.add_argument_group("lidc-phantom options")
    group.add_argument("--cache-dir", help="where built datasets are cached (default: user cache dir)")
    group.add_argument("--seed", type=int, default=0, help="phantom rendering seed (default 0)")
    group.add_argument(
        "--per-nodule",
        action="store_true",
        help="one sample per nodule (50%% consensus) instead of per annotation",
    )
    group.add_argument("--max-patients", type=int, help="only the first N patients (quick looks)")
    group.add_argument(
        "--negative-slices",
        type=int,
        default=0,
        metavar="N",
        help="add N nodule-free slices per scan (>= 20 mm from every contour), for slice detection",
    )
    group.add_argument(
        "--exclude-patients", metavar="FILE", help="file with one LIDC patient id a line to leave out"
    )


def _phantom_config(args):
    from lungnet.data.sources.phantom import PhantomConfig

    return PhantomConfig(
        seed=args.seed,
        one_per_nodule=args.per_nodule,
        max_patients=args.max_patients,
        negative_slices=getattr(args, "negative_slices", 0),
        exclude_patients_file=args.exclude_patients,
        cache_dir=args.cache_dir,
    )


def _cmd_data_build(args) -> int:
    from lungnet.data.registry import load_source

    source = load_source(args.source, _phantom_config(args), progress=not args.quiet)
    print(
        f"{source.description}\n{len(source.manifest)} samples, {source.manifest['patient_id'].nunique()} patients"
    )
    if source.is_phantom:
        print(f"cached in {_phantom_config(args).entry_dir()}")
    return 0


def _cmd_data_info(args) -> int:
    from lungnet.data.info import format_info, summarize
    from lungnet.data.registry import load_source
    from lungnet.data.splits import check_fractions

    fractions = check_fractions(args.split.split(","), "--split")  # before the data is read
    if args.split_seed < 0:
        raise ConfigError(f"--split-seed: {args.split_seed} must be >= 0")
    source = load_source(args.source, _phantom_config(args), progress=not args.json)
    if "paper_split" in source.manifest.columns and not args.json:
        from lungnet.data.harmonize import paper_table

        print("the paper's split (patient level, 64 / 16 / 20; column paper_split):")
        print(paper_table(source.manifest).to_string(index=False) + "\n")
    info = summarize(source, args.grouping, fractions=fractions, seed=args.split_seed, progress=not args.json)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _collection_options(assignments: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` strings -> {NAME: {KEY: VALUE}} with YAML scalars (numbers, booleans)."""
    import yaml

    out: dict[str, dict] = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise ConfigError(
                f"--option {item!r}: expected NAME.KEY=VALUE, e.g. luna16.malignancy_rule=median"
            )
        out.setdefault(name, {})[option] = yaml.safe_load(value) if value else value
    return out


def _cmd_data_harmonize(args) -> int:
    from lungnet.data.harmonize import harmonize, paper_table

    result = harmonize(
        args.sources,
        args.out,
        workers=args.workers,
        cluster=args.cluster,
        unify_patient_labels=args.unify_patient_labels,
        split_seed=args.split_seed,
        options=_collection_options(args.options),
        progress=not args.quiet,
    )
    print(
        f"{len(result.manifest)} slices in {result.out / 'manifest.csv'} ({result.built} volumes built, "
        f"{result.reused} reused from an earlier build, {len(result.skipped)} skipped)"
    )
    print(result.summary.to_string(index=False))
    for row in result.skipped.head(10).itertuples():
        print(f"skipped {row.dataset} {row.item}: {row.reason}")
    if len(result.skipped) > 10:
        print(f"... {len(result.skipped) - 10} more in {result.out / 'skipped.csv'}")
    print("\n" + paper_table(result.manifest).to_string(index=False))
    return 0


def _run_study(experiment: str, args, resume=None):
    """`lungnet train` and `reproduce`: prepare the run folder, run the study; ``(config, run_dir, summary)``,
    or None on a multi-worker run's other worker (the chief writes the run folder)."""
    from lungnet.studies.runner import prepare_run, release_worker_copy, run_study

    config, run_dir = prepare_run(
        experiment,
        profile=args.profile,
        data=args.data,
        out=args.out,
        resume=resume,
        assignments=args.assignments,
        seed=args.seed,
    )
    print(f"run folder: {run_dir}")
    summary = run_study(config, run_dir)
    if release_worker_copy(run_dir):
        return None
    _warn_unconverged(run_dir)
    return config, run_dir, summary


def _cmd_train(args) -> int:
    from lungnet.studies.runner import summary_line

    ran = _run_study(args.config, args, resume=args.resume)
    if ran is not None:
        config, run_dir, summary = ran
        print(
            f"\n{summary_line(summary, config.task)}\nrun folder: {run_dir}\nreport: {run_dir / 'report.html'}"
        )
    return 0


def _warn_unconverged(run_dir) -> None:
    from lungnet.training.fit import unconverged_phases

    for line in unconverged_phases(run_dir):
        print(f"warning: {line}", file=sys.stderr)


def _cmd_evaluate(args) -> int:
    from lungnet.studies.runner import evaluate_run

    out = evaluate_run(args.run, args.data, out=args.out, model_name=args.model)
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".csv", ".html"))
    print(f"evaluation written to {out} ({', '.join(written)})")
    return 0


def _cmd_predict(args) -> int:
    from lungnet.studies.runner import predict_run

    out = predict_run(args.run, args.data, out=args.out, model_name=args.model)
    written = json.loads((out / "prediction.json").read_text())
    print(written["summary"])
    print(f"predictions written to {out} ({', '.join(written['files'])})")
    return 0


def _cmd_serve_config(args) -> int:
    from lungnet.serving.tf_serving import serve_config

    path = serve_config(args.runs, args.out, names=args.names, version=args.version)
    print(f"TF Serving layout in {path.parent}; config {path}")
    print(
        f'serve it: docker run -p 8500:8500 -p 8501:8501 -v "{path.parent.resolve()}:/models" tensorflow/serving '
        "--model_config_file=/models/models.config"
    )
    return 0


def _cmd_export(args) -> int:
    from lungnet.serving.export import export_run

    path = export_run(args.run, model_name=args.model, out=args.out)
    print(f"SavedModel: {path}\ninspect it with: saved_model_cli show --dir {path} --all")
    image_only = json.loads((path / "lungnet.json").read_text()).get("image_only")
    if image_only:
        print(image_only)
    return 0


def _cmd_compare_budgets(args) -> int:
    from lungnet.reports.label_budget import compare_budgets

    csv, png = compare_budgets(args.runs, args.out)
    print(f"{csv}\n{png}")
    return 0


def _cmd_compare_models(args) -> int:
    from lungnet.evaluation.paired import compare_run_models, describe
    from lungnet.fileio import write_json

    result = compare_run_models(
        args.run,
        args.model_a,
        args.model_b,
        metric=args.metric,
        samples=args.samples,
        readers_slices_only=args.readers_slices,
    )
    print(describe(result))
    if args.out:
        write_json(Path(args.out), result)
    return 0


def _cmd_compare_runs(args) -> int:
    import pandas as pd

    from lungnet.reports.run_spread import compare_runs, describe_pairs, describe_spread

    record = compare_runs(args.runs, args.out, pairs=args.pair or ())
    summary = pd.DataFrame(record["summary"])
    print(f"{len(record['runs'])} runs of task {record['task']}; reference: {record['reference']}")
    for key, values in record["differences"].items():
        print(f"  differ in {key}: {', '.join(map(str, values))}")
    print(f"  recommended or selected: {', '.join(map(str, record['recommended']))}")
    print(
        f"test scores, mean ± sample sd over the runs [runs ahead of the reference / runs]:\n{describe_spread(summary)}"
    )
    if record["pairs"]:
        print(
            f"differences within each run, mean ± sample sd (min .. max):\n{describe_pairs(pd.DataFrame(record['pairs']))}"
        )
    print("\n".join(record["files"]))
    return 0


def _cmd_reproduce(args) -> int:
    from lungnet.serving.export import export_run
    from lungnet.studies.runner import summary_line

    ran = _run_study(args.study, args)
    if ran is not None:
        config, run_dir, summary = ran
        saved = export_run(run_dir)
        print(
            f"\n{summary_line(summary, config.task)}\nreport: {run_dir / 'report.html'}\nSavedModel: {saved}"
        )
    return 0


def _cmd_pretrain(args) -> int:
    from lungnet.pretraining.command import run_pretrain

    experiment = None
    if args.experiment:
        from lungnet.studies.runner import prepare_config

        experiment = prepare_config(
            args.experiment, profile=args.profile, data=args.data, assignments=args.assignments
        )
    elif args.profile or args.assignments:
        raise ConfigError("--profile and --set need --experiment (the experiment whose settings they change)")
    base = run_pretrain(
        args.backbone,
        args.data,
        experiment=experiment,
        method=args.method,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        all_patients=args.all_patients,
        exclude_patients=args.exclude_patients,
        phantom=_phantom_config(args),
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    print(f"weights: {base.path}\n{base.provenance}\nuse them with  model.weights: {base.path}")
    return 0


def _cmd_models_list(args) -> int:
    from lungnet.models import list_models

    rows = list_models(args.task)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    task = None
    for row in rows:
        if row["task"] != task:
            task = row["task"]
            print(f"{task}:")
        print(f"  {row['name']:<{width}}  {row['family']:<24} {row['description']}")
    return 0


def _cmd_models_describe(args) -> int:
    from lungnet.models import describe
    from lungnet.models.describe import format_description

    info = describe(args.name, input_size=args.input_size, task=args.task, channels=args.channels)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="SOURCE", help="data source instead of the experiment's own")
    parser.add_argument(
        "--profile",
        default=None,
        help="experiment profile: default (quick, CPU; the default), full (the study's), ...",
    )
    parser.add_argument("--out", help="run folder (default: runs/<experiment>/<UTC time>)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="assignments",
        help="override a config value, e.g. --set data.grouping=exclude-indeterminate (repeatable)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="every training seed set to N (data.seed: oversampling, shuffling, augmentation; training.seed: "
        "initial weights, dropout; the measured-nodule segmenter's too); the split and data stay. For a spread "
        "over seeds: `lungnet compare-runs`",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build and inspect data sources")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = data_commands.add_parser("build", help="build (or reuse the cached) dataset of SOURCE")
    _add_source_options(build)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_data_build)

    harmonize = data_commands.add_parser(
        "harmonize",
        help="CT collections (NAME:ROOT) -> lung-window PNG slices, masks and one manifest.csv",
    )
    harmonize.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="NAME:ROOT with NAME one of luna16, msd-lung, lndb, lungct-diagnosis, lung-pet-ct-dx",
    )
    harmonize.add_argument("--out", required=True, help="output folder (finished volumes are reused)")
    harmonize.add_argument("--workers", type=int, help="local worker processes (default: CPUs, at most 8)")
    harmonize.add_argument("--cluster", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786")
    harmonize.add_argument(
        "--unify-patient-labels",
        action="store_true",
        help="the paper's rule: a patient with a malignant slice is malignant on every slice",
    )
    harmonize.add_argument("--split-seed", type=int, default=0, help="seed of the paper's split (default 0)")
    harmonize.add_argument(
        "--option",
        action="append",
        dest="options",
        metavar="NAME.KEY=VALUE",
        help="a collection's option, e.g. luna16.malignancy_rule=median, lndb.label_rule=texture-solid, "
        "lungct-diagnosis.slice_step=2, lung-pet-ct-dx.annotations=/data/Annotation (repeatable)",
    )
    harmonize.add_argument("--quiet", action="store_true", help="no progress bar")
    harmonize.set_defaults(func=_cmd_data_harmonize)

    info = data_commands.add_parser(
        "info", help="counts per class and split, patients, image sizes and ranges"
    )
    _add_source_options(info)
    info.add_argument(
        "--grouping",
        default="paper",
        choices=["paper", "exclude-indeterminate", "5class", "labels"],
        help="label grouping (default: paper = ratings 1-3 benign, 4-5 malignant)",
    )
    info.add_argument(
        "--split", default="0.7,0.15,0.15", help="train,val,test fractions (default 0.7,0.15,0.15)"
    )
    info.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    info.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    info.set_defaults(func=_cmd_data_info)

    train = commands.add_parser("train", help="train the models of an experiment into a new run folder")
    train.add_argument("config", metavar="CONFIG", help="experiment YAML (or a name under experiments/)")
    _add_run_options(train)
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run folder with its own saved config (no --set/--data/--out/--profile)",
    )
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a trained run on every sample of another dataset"
    )
    evaluate.add_argument("run", metavar="RUN", help="run folder")
    evaluate.add_argument("--data", required=True, metavar="SOURCE", help="data source to evaluate on")
    evaluate.add_argument("--out", help="output folder (default: RUN/evaluations/<source>-<time>)")
    evaluate.add_argument("--model", help="which trained model of the run (default: the selected one)")
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="a run's model on unlabelled images: calibrated probabilities (classification) or masks "
        "(segmentation, Inf-Net)",
    )
    predict.add_argument("run", metavar="RUN", help="a finished run folder")
    predict.add_argument(
        "--data", required=True, metavar="SOURCE", help="images to predict (no labels needed)"
    )
    predict.add_argument("--out", help="output folder (default: RUN/predictions/<source>-<time>)")
    predict.add_argument(
        "--model",
        help="a trained network (or a classification run's image-only row) of the run (default: a "
        "classification run's recommended model, a segmentation run's selected one)",
    )
    predict.set_defaults(func=_cmd_predict)

    serving = commands.add_parser(
        "serve-config", help="TF Serving's layout (<name>/<version>/) and models.config for runs"
    )
    serving.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    serving.add_argument("--out", required=True, help="the model base folder to serve")
    serving.add_argument(
        "--name", action="append", dest="names", help="served name per run (default: experiment)"
    )
    serving.add_argument("--version", type=int, default=1, help="model version folder (default 1)")
    serving.set_defaults(func=_cmd_serve_config)

    export = commands.add_parser("export", help="export a run's model as a SavedModel for TF Serving")
    export.add_argument("run", metavar="RUN", help="run folder")
    export.add_argument("--model", help="which trained model of the run (default: the selected one)")
    export.add_argument("--out", help="output folder (default: RUN/saved_model)")
    export.set_defaults(func=_cmd_export)

    pretrain = commands.add_parser(
        "pretrain",
        help="self-supervised pretraining of an encoder on unlabelled CT (Models Genesis), cached for reuse",
    )
    pretrain.add_argument("--backbone", required=True, help="encoder to pretrain, e.g. efficientnet_b2")
    pretrain.add_argument(
        "--data", metavar="SOURCE", help="images to pretrain on (default: lidc-phantom, or the experiment's)"
    )
    pretrain.add_argument("--method", default="genesis", choices=["genesis"], help="default: genesis")
    budget = pretrain.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps (default: the experiment's, else 400)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget instead of a step count")
    pretrain.add_argument("--batch-size", type=int, help="default: 16 (or the experiment's)")
    pretrain.add_argument(
        "--experiment",
        metavar="CONFIG",
        help="take preprocessing, split and pretraining settings from this experiment (its training patients)",
    )
    pretrain.add_argument("--profile", help="the experiment's profile (with --experiment; default: default)")
    pretrain.add_argument(
        "--set", action="append", metavar="KEY=VALUE", dest="assignments", help="override an experiment value"
    )
    pretrain.add_argument(
        "--all-patients", action="store_true", help="every patient, not only the training split"
    )
    pretrain.add_argument(
        "--exclude-patients", metavar="FILE", help="file with one patient id a line to leave out"
    )
    pretrain.add_argument(
        "--cache-dir", help="where pretrained encoders are cached (default: user cache dir)"
    )
    pretrain.add_argument("--max-patients", type=int, help="lidc-phantom: only the first N patients")
    pretrain.add_argument("--seed", type=int, default=0, help="lidc-phantom rendering seed (default 0)")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.set_defaults(func=_cmd_pretrain, per_nodule=False)

    budgets = commands.add_parser(
        "compare-budgets", help="Inf-Net runs at several label budgets: a table and the label-budget curve"
    )
    budgets.add_argument("runs", nargs="+", metavar="RUN", help="finished inf-net run folders")
    budgets.add_argument("--out", required=True, help="folder for label_budget.csv and label_budget.png")
    budgets.set_defaults(func=_cmd_compare_budgets)

    paired = commands.add_parser(
        "compare-models", help="two models of one run on the same test images: a paired patient bootstrap"
    )
    paired.add_argument("run", metavar="RUN", help="a finished segmentation or Inf-Net run folder")
    paired.add_argument("model_a", metavar="MODEL_A")
    paired.add_argument("model_b", metavar="MODEL_B")
    paired.add_argument("--metric", default="dice", help="a per-image column of predictions.csv (dice, iou)")
    paired.add_argument("--samples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    paired.add_argument(
        "--readers-slices",
        action="store_true",
        help="only the slices the radiologists' agreement is measured on (central slices of nodules with "
        "3-4 readers)",
    )
    paired.add_argument("--out", help="also write the result as JSON here")
    paired.set_defaults(func=_cmd_compare_models)

    spread = commands.add_parser(
        "compare-runs",
        help="finished runs of one split that differ in their seeds: each model's test scores, mean ± sd, "
        "and how often it beat the study's simple reference",
    )
    spread.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders of one task and split")
    spread.add_argument(
        "--out", required=True, help="folder for spread.csv, spread_runs.csv, spread.json and spread.png"
    )
    spread.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="also the difference A − B within each run, over the runs (spread_pairs.csv); repeatable",
    )
    spread.set_defaults(func=_cmd_compare_runs)

    models = commands.add_parser("models", help="the architectures lungnet has (registries)")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    tasks = ["classification", "segmentation", "encoder"]
    listing = models_commands.add_parser("list", help="every registered architecture, by task")
    listing.add_argument("--task", choices=tasks, help="only this registry")
    listing.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    listing.set_defaults(func=_cmd_models_list)
    describe = models_commands.add_parser(
        "describe", help="parameters, input, outputs or pyramid levels, explanation layer of one architecture"
    )
    describe.add_argument("name", metavar="NAME", help="an architecture name from `lungnet models list`")
    describe.add_argument(
        "--input-size", type=int, default=128, help="image side to build it at (default 128)"
    )
    describe.add_argument("--channels", type=int, help="input channels (default: 3, segmenters 1)")
    describe.add_argument("--task", choices=tasks, help="for a name in several registries (efficientnet_b2)")
    describe.add_argument("--json", action="store_true", help="one JSON object")
    describe.set_defaults(func=_cmd_models_describe)

    reproduce = commands.add_parser(
        "reproduce", help="run a published study end to end (train, report, export)"
    )
    reproduce.add_argument(
        "study", help="study name, e.g. binary-nodule or attention-unet (experiments/*.yaml)"
    )
    _add_run_options(reproduce)
    reproduce.set_defaults(func=_cmd_reproduce)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning:`` line, without the source location (for users, not developers)."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warning_line
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LungnetError as exc:
        print(f"lungnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except OSError as exc:  # a full, read-only or missing disk: one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lungnet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lungnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
