"""How well does an attribute head rate the readers' characteristics? Validation split only.

Usage: .venv/bin/python docs/real-ct/analysis/attribute_head.py RUN

For a finished run whose custom CNN has ``model.attributes`` (``data.attribute_targets``): each ensemble
member's kept weights (``checkpoints/<model>_member<i>-final.weights.h5``, or ``<model>-final`` for one
model) are loaded into the full network, its ``aux_attributes`` output is read on every validation slice,
and each rating is scored against the readers' median: R^2 against predicting the training split's mean
(0: no better than the mean) and Spearman's rank correlation. The members' mean is scored too. First, as
the reason to try it (not image-only): a logistic regression on the readers' log-diameter, alone and with the
same ratings, fitted on the training split's central slices and scored (AUC) on validation's. The test split
is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lungnet.data.attributes import attribute_targets
from lungnet.data.dataset import classification_pipeline, prepare_data
from lungnet.models import build_classifier
from lungnet.models.contract import ATTRIBUTE_OUTPUT
from lungnet.runs import load_run_config
from lungnet.studies.classification import input_shape


def readers_reference(train, val, names) -> str:
    central = [f[f["is_central"] == 1] for f in (train, val)]

    def auc(columns) -> float:
        x = [np.column_stack([np.log(f["diameter_mm"]), *(f[c] for c in columns)]) for f in central]
        fitted = LogisticRegression(max_iter=1000).fit(x[0], central[0]["target"])
        return roc_auc_score(central[1]["target"], fitted.predict_proba(x[1])[:, 1])

    return f"log-diameter {auc([]):.3f}, with {', '.join(names)} {auc(names):.3f}"


def main(run: Path) -> None:
    config = load_run_config(run)
    names = config.data.attribute_targets
    [spec] = [m for m in config.models if getattr(m.model, "attributes", 0)]
    data = prepare_data(config.data, progress=False)
    val, train = data.split("val"), data.split("train")
    truth = attribute_targets(val, names)
    train_mean = attribute_targets(train, names).mean(axis=0)
    images = classification_pipeline(val, config.data, len(data.class_names)).map(lambda x, y: x)
    weights = sorted((run / "checkpoints").glob(f"{spec.name}_member*-final.weights.h5")) or [
        run / "checkpoints" / f"{spec.name}-final.weights.h5"
    ]
    predictions = []
    for path in weights:
        model = build_classifier(spec.model, input_shape(config), len(data.class_names))
        model.load_weights(path)
        predictions.append(np.asarray(model.predict(images, verbose=0)[ATTRIBUTE_OUTPUT]))
    print(f"{run}: {len(val)} validation slices, {len(weights)} member(s)")
    if len(data.class_names) == 2:
        print(f"  readers' ratings, validation AUC (not image-only): {readers_reference(train, val, names)}")
    for label, rated in [(p.name, q) for p, q in zip(weights, predictions, strict=True)] + [
        ("members' mean", np.mean(predictions, axis=0))
    ]:
        cells = []
        for k, name in enumerate(names):
            mean_error = np.mean((truth[:, k] - train_mean[k]) ** 2)
            r2 = 1 - np.mean((truth[:, k] - rated[:, k]) ** 2) / mean_error
            rho = spearmanr(truth[:, k], rated[:, k]).statistic
            cells.append(f"{name} R2 {r2:+.2f} rho {rho:.2f}")
        print(f"  {label}: " + "; ".join(cells))


if __name__ == "__main__":
    for arg in sys.argv[1:] or sys.exit(__doc__):
        main(Path(arg))
