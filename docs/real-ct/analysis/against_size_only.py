"""Patient-bootstrap AUC and macro F1 against the size-only baseline for a classification run finished before
the study wrote `against_size_only` (same function, on the run's saved test predictions; writes
RUN/against_size_only.json). Usage: .venv/bin/python docs/real-ct/analysis/against_size_only.py RUN"""

import json
import sys
from pathlib import Path

import pandas as pd

from lungnet.data.dataset import image_column, prepare_data
from lungnet.evaluation import fit_size_only
from lungnet.evaluation.paired import paired_bootstrap_classification
from lungnet.runs import load_run_config

run = Path(sys.argv[1])
config = load_run_config(run)
data = prepare_data(config.data, progress=False)
test, train = data.split("test"), data.split("train")
names = data.class_names
col = image_column(test, config.data.view)
size = fit_size_only(train["diameter_mm"], train["target"], names).predict(test["diameter_mm"])


def probs(csv):
    t = pd.read_csv(run / csv).set_index("image").loc[test[col].astype(str)]
    return t[[f"prob_{n}" for n in names]].to_numpy()


cnn, measured = probs("predictions.csv"), probs("measured_nodule_predictions.csv")
rows = {"selected": cnn, "measured_nodule": measured, "mean": (cnn + measured) / 2}
y = test["target"].to_numpy()
out = {}
for k, p in rows.items():
    r = paired_bootstrap_classification(y, p, size, test, names)
    out[k] = r
    for lvl in ("slice", "nodule", "patient"):
        print(
            k,
            lvl,
            {
                m: (
                    round(r[lvl][m]["a"], 3),
                    round(r[lvl][m]["b"], 3),
                    round(r[lvl][m]["difference"], 3),
                    [round(v, 3) for v in r[lvl][m]["ci95"]],
                )
                for m in ("auc", "f1_macro")
            },
        )
(run / "against_size_only.json").write_text(json.dumps(out, indent=1))
