"""Semi-Inf-Net's pseudo-label rounds in a run folder (`lungnet.training.pseudo_labels` has the rules).

Each round is resumable on its own: the round's pseudo-labels are written first (PNG masks at the image's
native size and ``pseudo_labels/<model>/roundNNN.csv``, both atomically), then the round trains as a
`train_phase` of its own (``<model>_roundNNN``), which a resumed run skips once finished. An interrupted
run therefore restarts inside the round it was in, with that round's pseudo-labels unchanged.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungnet.data.io import read_image
from lungnet.data.pipelines import sample_spacings
from lungnet.data.preprocessing import PreprocessConfig
from lungnet.evaluation.segmentation import binarize, per_image_metrics
from lungnet.fileio import write_csv
from lungnet.models import inference_model
from lungnet.studies.mask_prediction import to_native, write_mask_png
from lungnet.studies.segmentation import compile_segmentation, predict_split
from lungnet.training.fit import train_phase
from lungnet.training.multiscale import multiscale_training
from lungnet.training.pseudo_labels import SemiConfig, pseudo_label_confidence, round_groups

PSEUDO_DIR = "pseudo_labels"
ROUND_COLUMNS = ("position", "pseudo_mask", "confidence", "kept", "dice_vs_hidden")


def native_masks(
    probs: np.ndarray, frame: pd.DataFrame, preprocess: PreprocessConfig, threshold: float
) -> list[np.ndarray]:
    """Each probability map [S, S] of `frame`'s rows on its image's own pixels (`to_native`), thresholded."""
    spacings = sample_spacings(frame, preprocess, image_column="image_ref")
    out = []
    for prob, ref, spacing in zip(probs, frame["image_ref"], spacings, strict=True):
        shape = read_image(str(ref)).shape[:2]
        out.append(to_native(prob, shape, preprocess, float(spacing)) >= threshold)
    return out


def round_table(
    model: keras.Model,
    group: pd.DataFrame,
    index: int,
    folder: Path,
    semi: SemiConfig,
    data,
    threshold: float,
) -> pd.DataFrame:
    """The pseudo-labels of one group (`ROUND_COLUMNS`), made with `model` or read back if already made."""
    path = folder / f"round{index:03d}.csv"
    if path.is_file():
        return pd.read_csv(path, dtype={"pseudo_mask": str})
    pred = predict_split(inference_model(model), data.pipeline(group, training=False))
    confidence = pseudo_label_confidence(pred.probs, threshold)
    # agreement with the masks hidden from training: reported, never trained on
    dice = per_image_metrics(pred.masks, binarize(pred.probs, threshold))["dice"].to_numpy()
    paths = []
    for i, mask in enumerate(native_masks(pred.probs, group, data.preprocess, threshold)):
        target = folder / f"round{index:03d}" / f"{i:03d}.png"
        write_mask_png(target, mask)
        paths.append(str(target))
    table = pd.DataFrame(
        {
            "position": np.arange(len(group)),
            "pseudo_mask": paths,
            "confidence": confidence,
            "kept": (confidence > 0) & (confidence >= semi.confidence_threshold) & semi.pseudo_labels,
            "dice_vs_hidden": dice,
        }
    )
    write_csv(path, table)
    return table


def pseudo_label_rounds(
    spec,
    model: keras.Model,
    config,
    data,
    labelled: pd.DataFrame,
    unlabelled: pd.DataFrame,
    run_dir: Path,
    progress: bool = True,
) -> tuple[dict, pd.DataFrame]:
    """Run every round and the final labelled fine-tuning on `model` (trained on `labelled` already).

    Returns (the training summary: phases, epochs and minutes in all; the per-round log, also written to
    ``logs/<model>_rounds.csv``)."""
    semi: SemiConfig = spec.semi
    threshold = config.postprocess.threshold
    learning_rate = semi.learning_rate or config.training.learning_rate
    compile_fn = compile_segmentation(config.loss)
    folder = Path(run_dir) / PSEUDO_DIR / spec.name
    groups = round_groups(unlabelled, semi, seed=config.labels.seed + 1)
    kept_frames, records, phases = [], [], []
    log = Path(run_dir) / "logs" / f"{spec.name}_rounds.csv"

    def fit(frame: pd.DataFrame, phase: str, epochs: int) -> dict:
        fit_model, batches = multiscale_training(
            model,
            data.pipeline(frame, training=True),
            spec.multiscale_rates,
            data.preprocess.image_size,
        )
        return train_phase(
            fit_model,
            batches,
            data.val,
            run_dir=run_dir,
            phase=f"{spec.name}_{phase}",
            epochs=epochs,
            learning_rate=learning_rate,
            config=config.training,
            compile_fn=compile_fn,
        )

    for index, group in enumerate(tqdm(groups, desc=f"{spec.name} rounds", disable=not progress), start=1):
        group = group.reset_index(drop=True)
        table = round_table(model, group, index, folder, semi, data, threshold)
        kept = table[table["kept"].astype(bool)]
        kept_frames.append(
            group.iloc[kept["position"].to_numpy()].assign(mask_ref=kept["pseudo_mask"].to_numpy())
        )
        train_frame = pd.concat([labelled, *kept_frames], ignore_index=True)
        summary = fit(train_frame, f"round{index:03d}", semi.epochs_per_round)
        phases.append(summary)
        records.append(
            {
                "round": index,
                "group_images": len(group),
                "kept": len(kept),
                "kept_total": int(sum(len(f) for f in kept_frames)),
                "training_images": len(train_frame),
                "mean_confidence": float(table["confidence"].mean()),
                "kept_dice_vs_hidden": float(kept["dice_vs_hidden"].mean()) if len(kept) else float("nan"),
                "all_dice_vs_hidden": float(table["dice_vs_hidden"].mean()),
                "best_val_loss": summary.get("best_val_loss"),
            }
        )
        write_csv(log, pd.DataFrame(records))
        last = records[-1]
        print(
            f"{spec.name} round {index}/{len(groups)}: kept {last['kept']}/{last['group_images']} pseudo-labels "
            f"(Dice against the hidden masks: kept {last['kept_dice_vs_hidden']:.3f}, all "
            f"{last['all_dice_vs_hidden']:.3f}), training on {last['training_images']} images"
        )
    if semi.final_epochs:
        phases.append(fit(labelled, "final", semi.final_epochs))
    rounds = pd.DataFrame(records)
    summary = {
        "phases": len(phases),
        "rounds": len(records),
        "epochs_run": int(sum(p.get("epochs_run") or 0 for p in phases)),
        "wall_seconds": round(sum(p.get("wall_seconds") or 0.0 for p in phases), 1),
        "pseudo_labels_kept": int(rounds["kept"].sum()) if len(rounds) else 0,
        "pseudo_labels_made": int(rounds["group_images"].sum()) if len(rounds) else 0,
    }
    return summary, rounds
