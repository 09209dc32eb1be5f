#!/usr/bin/env python3
"""Reference image preprocessing of an image bundle (Pillow), and the core's features on it
(ONNX Runtime).

    python tests/py/image_reference.py --bundle DIR --out-dir D [--features OUTPUT] FILE...

Follows the bundle manifest's `preprocessing.image` with Pillow and numpy, independently of
Lethe: Pillow decodes each file and converts it to "RGB" or "L" (Pillow drops alpha and uses
ITU-R 601-2 luma); values p / divide_by in float32; the shorter side resized to
resize_shorter_side (the longer side int(side * long / short), as torchvision computes it) by
Pillow's BILINEAR resampling of a float ("F") image, one channel at a time; a centre crop with
offsets round((size - crop) / 2) (Python's round); (v - mean) / std in float32.

Writes, for file i: D/pixels_i.npy (uint8 [H, W, C], Pillow's decoded pixels) and
D/input_i.npy (float32 [C, height, width], the preprocessed input). With --features it also runs
the core on all inputs at once and writes D/features.npy (float32 [n, dim]).

Needs numpy, Pillow and onnxruntime.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image


def preprocess(pixels, spec, height, width):
    x = pixels.astype(np.float32) / np.float32(spec["divide_by"])
    h, w = x.shape[:2]
    side = spec["resize_shorter_side"]
    if side is None:
        new_w, new_h = w, h
    elif w <= h:
        new_w, new_h = side, int(side * h / w)
    else:
        new_w, new_h = int(side * w / h), side
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    planes = []
    for c in range(x.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(x[:, :, c]))
        assert plane.mode == "F"
        if (new_w, new_h) != (w, h):
            plane = plane.resize((new_w, new_h), Image.Resampling.BILINEAR)
        p = np.asarray(plane, dtype=np.float32)[top:top + height, left:left + width]
        planes.append((p - np.float32(spec["mean"][c])) / np.float32(spec["std"][c]))
    return np.stack(planes).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--features")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    with open(os.path.join(args.bundle, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    spec = manifest["preprocessing"]["image"]
    _, channels, height, width = manifest["inputs"][0]["shape"]
    mode = {"rgb": "RGB", "gray": "L"}[spec["channels"]]
    inputs = []
    for i, path in enumerate(args.files):
        with Image.open(path) as im:
            pixels = np.asarray(im.convert(mode), dtype=np.uint8)
        pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
        x = preprocess(pixels, spec, height, width)
        np.save(os.path.join(args.out_dir, f"pixels_{i}.npy"), pixels)
        np.save(os.path.join(args.out_dir, f"input_{i}.npy"), x)
        inputs.append(x)
    if args.features:
        import onnxruntime as ort
        sess = ort.InferenceSession(os.path.join(args.bundle, manifest["core"]["file"]),
                                    providers=["CPUExecutionProvider"])
        name = manifest["inputs"][0]["name"]
        (features,) = sess.run([args.features], {name: np.stack(inputs)})
        np.save(os.path.join(args.out_dir, "features.npy"), features.astype(np.float32))


if __name__ == "__main__":
    main()
