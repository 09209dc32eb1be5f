#!/usr/bin/env python3
"""Independent check of a head's weights against scikit-learn Ridge.

    python tests/py/ridge_reference.py --features F.npy --logits Z.npy --labels Y.npy \
        --keep K.npy --weights W.npz --bundle DIR [--features-name NAME]

F: float32 [n, d] features from `lethe features`; Z: float32 [n, K] core logits from
`lethe features --features <logits output>` (omit for a core without logits); Y: labels [n];
K: the row numbers that remain learned; W: `lethe weights` output (W [C, d], b [C]).

Following DESIGN.md: q(v) = round(v * 2^F) / 2^F with ties away from zero, inputs [q(phi), 1],
targets q(s * onehot(y) - z_mapped), and Ridge(alpha=lambda, fit_intercept=False). Exits 1 if
the largest relative difference (Frobenius norm of the difference over the norm of the
reference) exceeds 1e-9.
"""

import argparse
import json
import os
import sys

import numpy as np
from sklearn.linear_model import Ridge

TOLERANCE = 1e-9


def quantize(v, frac_bits):
    scaled = np.asarray(v, dtype=np.float64) * 2.0**frac_bits
    return np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) / 2.0**frac_bits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--logits")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--keep", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--features-name")
    args = ap.parse_args()

    with open(os.path.join(args.bundle, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    head = m["head"]
    frac_bits, lam, s = head["frac_bits"], head["lambda"], head["target_scale"]
    n_classes = len(m["classes"])

    keep = np.load(args.keep).astype(np.int64)
    phi = np.load(args.features).astype(np.float64)[keep]
    y = np.load(args.labels).astype(np.int64)[keep]
    z = np.zeros((len(keep), n_classes))
    if args.logits:
        core_z = np.load(args.logits).astype(np.float64)[keep]
        for j, c in enumerate(m["core_logits"]["classes"]):
            z[:, c] = core_z[:, j]

    x = np.hstack([quantize(phi, frac_bits), np.ones((len(keep), 1))])
    onehot = np.zeros((len(keep), n_classes))
    onehot[np.arange(len(keep)), y] = s
    r = quantize(onehot - z, frac_bits)

    ref = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(x, r)
    theta = ref.coef_  # [C, d + 1]
    w_ref, b_ref = theta[:, :-1], theta[:, -1]

    got = np.load(args.weights)
    w, b = got["W"], got["b"]
    if w.shape != w_ref.shape or b.shape != b_ref.shape:
        print(f"shape mismatch: W {w.shape} vs {w_ref.shape}, b {b.shape} vs {b_ref.shape}")
        return 1
    diff = np.sqrt(np.sum((w - w_ref) ** 2) + np.sum((b - b_ref) ** 2))
    norm = np.sqrt(np.sum(w_ref**2) + np.sum(b_ref**2))
    rel = diff / norm
    print(f"samples {len(keep)}  d {w.shape[1]}  C {w.shape[0]}  relative difference {rel:.3e}")
    return 0 if rel <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
