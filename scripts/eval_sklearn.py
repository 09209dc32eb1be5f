#!/usr/bin/env python3
"""scikit-learn baselines for `lethe eval` (cli/src/eval.rs), which writes the arrays and runs

    .lethe/venv/bin/python scripts/eval_sklearn.py JOBS.json

JOBS.json: {"jobs": [job, ...]}; every path is relative to the folder of JOBS.json, and a list
of paths means the arrays side by side (np.hstack). Two kinds of job:

- "logreg": multinomial logistic regression on standardized features (the usual linear
  baseline). Fields: train, train_y, test, test_y. Result: test_accuracy (%).
- "probe": a linear probe for one class, the representation-level audit. A balanced binary
  logistic regression is fitted on the even rows of `test` (labels `test_y`, 1 = the class),
  scored on the odd rows (balanced accuracy, %), and applied to `forgotten` (the forgotten
  training samples of the class): forgotten_recall = % of them it flags as the class.

Prints {"results": {id: {...}}} as one JSON line. Deterministic: lbfgs, no random state used.
Needs numpy and scikit-learn (scripts/setup.sh installs them into .lethe/venv).
"""

import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
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


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        jobs = json.load(f)["jobs"]
    kinds = {"logreg": logreg, "probe": probe}
    results = {job["id"]: kinds[job["kind"]](base, job) for job in jobs}
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
