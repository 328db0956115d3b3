"""Calibration: reliability curves, expected calibration error and temperature scaling.

Confidence is the probability of the predicted class, ``max_k probs[:, k]``; a sample is correct when its
predicted class (the argmax) is the true class. Bins are equal-width on [0, 1]: bin b holds confidences in
``(edges[b], edges[b + 1]]`` (the first bin also holds 0).

ECE (Guo et al., 2017) = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b|.

Temperature scaling divides the logits by one scalar T > 0 fitted on the validation split by minimising the
negative log-likelihood; T > 1 softens over-confident outputs. Given probabilities instead of logits, the
log-probabilities serve as logits (softmax(log p / T) is the same as scaling the original logits, because
log-softmax only shifts each row by a constant). It never changes the argmax, so accuracy and F1 are unchanged.

Prior correction: a model trained on class-balanced data (oversampling, or a class-weighted loss) predicts
p(y | x) under a uniform class prior. Multiplying by the training split's class frequencies and renormalising
(Saerens et al., 2002) gives the probabilities under the prior the data really has, a shift of the logits
that temperature alone cannot make. `fit_calibration` fits a temperature with and without it and keeps the
one with the lower validation NLL. The correction can change the argmax, so the reported F1 stays that of the
uncalibrated decision (the same decision as thresholding the corrected probabilities at the prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from lungnet.errors import DataError
from lungnet.evaluation.metrics import as_labels, as_probs

_LOG_EPS = 1e-12  # probabilities are clipped here before the log, so a 0 gives a large but finite logit


def _confidence_correct(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1])
    if len(y) != len(p):
        raise DataError(f"y_true has {len(y)} samples but probs has {len(p)} rows")
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # number of inner edges strictly below c: c in (edges[b], edges[b+1]] -> b; c = 0 -> 0
    return np.searchsorted(edges[1:-1], confidence, side="left")


def reliability_curve(y_true, probs, n_bins: int = 10) -> dict:
    """Per-bin statistics of predicted-label confidence.

    Returns ``{"bin_edges": [n_bins + 1], "counts": [n_bins] int, "confidence": [n_bins] mean confidence,
    "accuracy": [n_bins] fraction correct, "ece": float}``; empty bins hold NaN confidence and accuracy.
    """
    if int(n_bins) < 1:
        raise DataError(f"n_bins must be at least 1, got {n_bins}")
    conf, correct = _confidence_correct(y_true, probs)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    b = _bin_index(conf, edges)
    counts = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / counts
        accuracy = np.bincount(b, weights=correct, minlength=n_bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / len(conf) * np.abs(accuracy[filled] - mean_conf[filled])))
    return {"bin_edges": edges, "counts": counts, "confidence": mean_conf, "accuracy": accuracy, "ece": ece}


def expected_calibration_error(y_true, probs, n_bins: int = 10) -> float:
    """Equal-width-bin ECE of predicted-label confidence: sum_b n_b / N * |acc_b - conf_b|."""
    return reliability_curve(y_true, probs, n_bins)["ece"]


def negative_log_likelihood(y_true, probs) -> float:
    """Mean -log p(true class), probabilities clipped at 1e-12."""
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1])
    if len(y) != len(p):
        raise DataError(f"y_true has {len(y)} samples but probs has {len(p)} rows")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _LOG_EPS, 1.0))))


def _looks_like_probs(a: np.ndarray) -> bool:
    return (
        a.ndim == 1
        or (a.ndim == 2 and a.shape[1] == 1)
        or (bool(np.all((a >= 0) & (a <= 1))) and np.allclose(a.sum(axis=1), 1.0, atol=1e-2))
    )


def _to_logits(values, inputs: str) -> np.ndarray:
    """Logits [N, K] from probabilities (their logs) or from logits, as ``inputs`` says ("auto" guesses)."""
    if inputs not in ("auto", "probs", "logits"):
        raise DataError(f"inputs must be 'auto', 'probs' or 'logits', got {inputs!r}")
    a = np.asarray(values, dtype=np.float64)
    if inputs == "probs" or (inputs == "auto" and _looks_like_probs(a)):
        return np.log(np.clip(as_probs(a), _LOG_EPS, 1.0))
    if a.ndim != 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise DataError(f"logits must be a finite, non-empty [N, K] array, got shape {a.shape}")
    return a


def _nll_of_logits(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-np.mean(log_softmax(z / temperature, axis=1)[np.arange(len(y)), y]))


def fit_temperature(
    logits_or_probs,
    y_true,
    *,
    inputs: str = "auto",
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """The temperature T > 0 that minimises validation NLL of softmax(logits / T).

    Args:
        logits_or_probs: [N, K] logits or probabilities of the validation split (binary: a 1-D malignant
            probability is accepted). Probabilities are turned into log-probabilities.
        y_true: int [N] validation labels.
        inputs: "probs", "logits", or "auto" (probabilities if every row lies in [0, 1] and sums to 1).
        bounds: search interval for T; the search is a bounded scalar minimisation over log T.

    Returns T as a float. If the optimum would not lower the NLL below that at T = 1 (e.g. a degenerate
    split), 1.0 is returned, so fitting never worsens the validation NLL.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < 1 < hi:
        raise DataError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds}")
    z = _to_logits(logits_or_probs, inputs)
    y = as_labels(y_true, z.shape[1])
    if len(y) != len(z):
        raise DataError(f"y_true has {len(y)} samples but there are {len(z)} rows of logits/probabilities")
    res = minimize_scalar(
        lambda log_t: _nll_of_logits(z, y, float(np.exp(log_t))),
        bounds=(np.log(lo), np.log(hi)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    t = float(np.exp(res.x))
    return t if _nll_of_logits(z, y, t) < _nll_of_logits(z, y, 1.0) else 1.0


def apply_temperature(probs_or_logits, temperature: float, *, inputs: str = "auto") -> np.ndarray:
    """Calibrated probabilities softmax(logits / T) [N, K]; probabilities are first turned into log-probs."""
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise DataError(f"temperature must be a positive number, got {temperature}")
    return softmax(_to_logits(probs_or_logits, inputs) / t, axis=1)


def class_prior(y_train, n_classes: int) -> np.ndarray:
    """Class frequencies of the training labels [K] (a class absent from training gets none)."""
    y = np.asarray(y_train, dtype=np.int64)
    if len(y) == 0:
        raise DataError("the training split has no labels to take a class prior from")
    return np.bincount(y, minlength=n_classes)[:n_classes] / len(y)


def prior_corrected(probs, prior) -> np.ndarray:
    """Probabilities of a model trained on balanced classes, moved to the class prior `prior` [K]."""
    p = as_probs(probs)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (p.shape[1],) or np.any(prior < 0) or prior.sum() <= 0:
        raise DataError(
            f"the class prior must hold {p.shape[1]} non-negative frequencies, got {prior.tolist()}"
        )
    weighted = p * prior
    return weighted / np.clip(weighted.sum(axis=1, keepdims=True), _LOG_EPS, None)


@dataclass(frozen=True)
class Calibration:
    """A temperature, after the prior correction when `prior` is set; `fitted_on` names the held-out
    predictions it was fitted on (the validation split's unless a study says otherwise)."""

    temperature: float
    prior: tuple[float, ...] | None = None
    fitted_on: str = "validation"

    def apply(self, probs) -> np.ndarray:
        p = prior_corrected(probs, self.prior) if self.prior is not None else as_probs(probs)
        return apply_temperature(p, self.temperature, inputs="probs")

    def describe(self) -> str:
        prior = "prior-corrected, " if self.prior is not None else ""
        return f"{prior}T = {self.temperature:.2f}"

    @classmethod
    def from_dict(cls, record: dict | None) -> Calibration | None:
        """The calibration a run recorded (``as_dict``; an older run's has a temperature only)."""
        if not record or record.get("temperature") is None:
            return None
        prior = record.get("train_prior") if record.get("prior_correction") else None
        return cls(
            float(record["temperature"]),
            tuple(prior) if prior is not None else None,
            record.get("fitted_on", "validation"),
        )

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "prior_correction": self.prior is not None,
            "train_prior": list(self.prior) if self.prior is not None else None,
            "fitted_on": self.fitted_on,
        }


def fit_calibration(val_probs, y_val, y_train, fitted_on: str = "validation") -> Calibration:
    """Temperature scaling, with or without the training split's prior correction, whichever gives the
    lower NLL on the held-out predictions `val_probs` (the two are equal when training classes are already
    balanced); `fitted_on` says what those predictions are."""
    p = as_probs(val_probs)
    prior = class_prior(y_train, p.shape[1])
    nll = {}
    for candidate_prior, q in ((None, p), (tuple(prior.tolist()), prior_corrected(p, prior))):
        t = fit_temperature(q, y_val, inputs="probs")
        nll[Calibration(t, candidate_prior, fitted_on)] = negative_log_likelihood(
            y_val, apply_temperature(q, t, inputs="probs")
        )
    return min(nll, key=nll.get)


def ece_interval(y_true, probs, patients, samples: int = 1000, seed: int = 0) -> list[float]:
    """95 % interval of the ECE over patient-bootstrap resamples (a patient's slices are not independent,
    so patients, not slices, are drawn with replacement)."""
    from lungnet.evaluation.paired import patient_bootstrap

    p, y = as_probs(probs), np.asarray(y_true)
    return patient_bootstrap(
        lambda rows: expected_calibration_error(y[rows], p[rows]), patients, samples=samples, seed=seed
    )


def calibration_summary(calibration: Calibration, y_test, test_probs, patients=None) -> dict:
    """The fitted calibration (and what it was fitted on) and the ECE of `test_probs` before and after it;
    given each test sample's patient, also the ECEs' 95 % patient-bootstrap intervals (``ece_before_ci95``,
    ``ece_after_ci95``), so a target such as ECE <= 0.05 can be read against the noise of one test split."""
    calibrated = calibration.apply(test_probs)
    out = {
        **calibration.as_dict(),
        "ece_before": expected_calibration_error(y_test, test_probs),
        "ece_after": expected_calibration_error(y_test, calibrated),
    }
    if patients is not None:
        out["ece_before_ci95"] = ece_interval(y_test, test_probs, patients)
        out["ece_after_ci95"] = ece_interval(y_test, calibrated, patients)
    return out
