"""The `lungnet` command. Each sub-command is a thin call into the library (the same API notebooks use)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lungnet.errors import LungnetError


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
        "--exclude-patients", metavar="FILE", help="file with one LIDC patient id a line to leave out"
    )


def _phantom_config(args):
    from lungnet.data.sources.phantom import PhantomConfig

    return PhantomConfig(
        seed=args.seed,
        one_per_nodule=args.per_nodule,
        max_patients=args.max_patients,
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

    source = load_source(args.source, _phantom_config(args), progress=not args.json)
    fractions = tuple(float(f) for f in args.split.split(","))
    info = summarize(source, args.grouping, fractions=fractions, seed=args.split_seed)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


STUDIES = {"binary-nodule": "binary_nodule.yaml"}
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def _cmd_reproduce(args) -> int:
    import dataclasses

    from lungnet.data.dataset import load_data_config, prepare_data
    from lungnet.data.info import format_info, summarize

    config_path = Path(args.config) if args.config else EXPERIMENTS_DIR / STUDIES[args.study]
    config = load_data_config(config_path)
    if args.data:
        config = dataclasses.replace(config, source=args.data)
    data = prepare_data(config)
    print(format_info(summarize(data.source, config.grouping, config.split, config.split_seed)))
    images, targets = next(iter(data.train))
    print(
        f"\ntraining pipeline ready: batches of {tuple(images.shape)} images, {tuple(targets.shape)} targets; "
        f"{len(data.train_manifest)} training samples after oversampling to (largest class + "
        f"{config.oversample_extra})."
    )
    print(
        "Not built yet: the models, training, evaluation and report of this study (issue 3). "
        "This command stops after preparing the data."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build and inspect data sources")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = data_commands.add_parser("build", help="build (or reuse the cached) dataset of SOURCE")
    _add_source_options(build)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_data_build)

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

    reproduce = commands.add_parser("reproduce", help="run a published study end to end")
    reproduce.add_argument("study", choices=sorted(STUDIES), help="which study")
    reproduce.add_argument("--data", help="data SOURCE instead of the study's (default: lidc-phantom)")
    reproduce.add_argument("--config", help="experiment YAML instead of the study's own")
    reproduce.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LungnetError as exc:
        print(f"lungnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print("lungnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
