#!/usr/bin/env python3
"""scikit-learn baselines for `lethe eval` (cli/src/eval/), which writes the arrays and runs

    .lethe/venv/bin/python scripts/eval_sklearn.py JOBS.json

JOBS.json: {"jobs": [job, ...]}; every path is relative to the folder of JOBS.json, and a list
of paths means the arrays side by side (np.hstack). Three kinds of job:

- "logreg": multinomial logistic regression on standardized features (the usual linear
  baseline). Fields: train, train_y, test, test_y. Result: test_accuracy (%).
- "probe": a linear probe for one class, the representation-level audit. A balanced binary
  logistic regression is fitted on the even rows of `test` (labels `test_y`, 1 = the class),
  scored on the odd rows (balanced accuracy, %), and applied to `forgotten` (the forgotten
  training samples of the class): forgotten_recall = % of them it flags as the class.
- "ridge": a head retrained from scratch independently of Lethe: scikit-learn's Ridge on the
  remaining samples, solving the problem DESIGN.md states for Lethe's head: inputs [q(phi), 1],
  targets q(s * onehot(y) - z), penalty lambda on the weights and the bias, with
  q(v) = round(v * 2^frac_bits) / 2^frac_bits (ties away from zero). Fields: phi, z, y (every
  user sample), remaining and forgotten (row numbers), test_phi, test_z, test_y, W and b
  (Lethe's canonical weights after the forget), lambda, target_scale, frac_bits. Result:
  accuracies (%) of Ridge's head z + phi W^T + b on the forgotten, remaining and test samples,
  and the relative difference ||Theta_ridge - Theta_Lethe||_F / ||Theta_ridge||_F.

Prints {"results": {id: {...}}} as one JSON line. Deterministic: lbfgs, no random state used.
Needs numpy and scikit-learn (scripts/setup.sh installs them into .lethe/venv).
"""

import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MAX_ITER = 2000


def load(base, parts):
    """One array (a path) or several side by side (a list of paths)."""
    if isinstance(parts, str):
        return np.load(os.path.join(base, parts), allow_pickle=False)
    arrays = [np.load(os.path.join(base, p), allow_pickle=False) for p in parts]
    return np.hstack(arrays).astype(np.float64)


def logreg(base, job):
    x, y = load(base, job["train"]), load(base, job["train_y"]).astype(np.int64)
    xt, yt = load(base, job["test"]), load(base, job["test_y"]).astype(np.int64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    model.fit(x, y)
    return {"test_accuracy": 100.0 * float(np.mean(model.predict(xt) == yt))}


def probe(base, job):
    x, y = load(base, job["test"]), load(base, job["test_y"]).astype(np.int64)
    forgotten = load(base, job["forgotten"])
    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=MAX_ITER, class_weight="balanced")
    )
    model.fit(x[0::2], y[0::2])
    held_out = balanced_accuracy_score(y[1::2], model.predict(x[1::2]))
    recall = float(np.mean(model.predict(forgotten) == 1)) if len(forgotten) else float("nan")
    return {"balanced_accuracy": 100.0 * float(held_out), "forgotten_recall": 100.0 * recall}


def quantize(v, frac_bits):
    scaled = np.asarray(v, dtype=np.float64) * 2.0**frac_bits
    return np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) / 2.0**frac_bits


def ridge(base, job):
    phi, z = load(base, job["phi"]).astype(np.float64), load(base, job["z"]).astype(np.float64)
    y = load(base, job["y"]).astype(np.int64)
    keep = load(base, job["remaining"]).astype(np.int64)
    gone = load(base, job["forgotten"]).astype(np.int64)
    frac_bits, s = job["frac_bits"], job["target_scale"]
    x = np.hstack([quantize(phi[keep], frac_bits), np.ones((len(keep), 1))])
    targets = s * np.eye(z.shape[1])[y[keep]] - z[keep]
    fit = Ridge(alpha=job["lambda"], fit_intercept=False, solver="cholesky")
    fit.fit(x, quantize(targets, frac_bits))
    w, b = fit.coef_[:, :-1], fit.coef_[:, -1]

    def accuracy(features, logits, labels, rows):
        if len(rows) == 0:
            return None
        predicted = (logits[rows] + features[rows] @ w.T + b).argmax(axis=1)
        return 100.0 * float(np.mean(predicted == labels[rows]))

    test_phi = load(base, job["test_phi"]).astype(np.float64)
    test_z = load(base, job["test_z"]).astype(np.float64)
    test_y = load(base, job["test_y"]).astype(np.int64)
    lethe_w, lethe_b = load(base, job["W"]), load(base, job["b"])
    diff = np.sqrt(np.sum((w - lethe_w) ** 2) + np.sum((b - lethe_b) ** 2))
    norm = np.sqrt(np.sum(w**2) + np.sum(b**2))
    return {
        "forgotten_accuracy": accuracy(phi, z, y, gone),
        "retained_accuracy": accuracy(phi, z, y, keep),
        "test_accuracy": accuracy(test_phi, test_z, test_y, np.arange(len(test_y))),
        "relative_difference": float(diff / norm),
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        jobs = json.load(f)["jobs"]
    kinds = {"logreg": logreg, "probe": probe, "ridge": ridge}
    results = {job["id"]: kinds[job["kind"]](base, job) for job in jobs}
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
