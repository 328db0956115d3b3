"""Is a run's image-only classifier fitted on sharper masks than it meets? Its segmenter's Dice per split.

Usage: .venv/bin/python docs/real-ct/analysis/segmenter_train_test_gap.py RUN [RUN ...]

RUN: a run with a segmenter trained on its training patients (`<run>/segmenter/` and
`segmenter_manifest.csv`): a measured-nodule classification run or a nodule-fusion run (the same recipe on the
same patient split). The segmenter outlines every slice of its manifest; Dice against the readers' outlines on
each image's own pixels (`segmenter_dice_by_split`, what a classification run records as
`segmenter.dice_by_split`), on every slice of the manifest and on the slices the run's grouping labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lungnet.data.labels import assign_labels
from lungnet.evaluation.measured_nodule import segmenter_dice_by_split
from lungnet.runs import load_run_config
from lungnet.studies.mask_prediction import predict_masks

for run in map(Path, sys.argv[1:]):
    config = load_run_config(run)
    tta = config.measured_nodule.tta if hasattr(config, "measured_nodule") else config.segmenter.tta
    rows = pd.read_csv(run / "segmenter_manifest.csv")
    masks = predict_masks(run / "segmenter", rows, "image", tta=tta, progress=False)
    labelled = assign_labels(rows, config.data.grouping, origin=str(run))
    for name, frame in (("every slice", rows), (f"grouping {config.data.grouping}", labelled)):
        dice = segmenter_dice_by_split(dict(tuple(frame.groupby("split"))), "image", "mask", masks)
        said = ", ".join(f"{s} {d['dice_mean']:.3f} ({d['slices']})" for s, d in sorted(dice.items()))
        print(f"{run} ({name}): Dice {said}")
