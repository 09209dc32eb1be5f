#!/usr/bin/env python3
"""Reference run of a bundle's core with Python ONNX Runtime (CPU execution provider).

    python tests/py/ort_reference.py --bundle DIR --input X.npy --out-dir D

Reads DIR/manifest.json to find the core file and its input name, feeds the float32 array
in X.npy (already preprocessed, full shape including the batch axis) and writes
D/<output_name>.npy (float32) for every output of the graph. Needs numpy and onnxruntime.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description="run a bundle's core.onnx with onnxruntime (CPU)")
    ap.add_argument("--bundle", required=True, help="bundle folder (core.onnx + manifest.json)")
    ap.add_argument("--input", required=True, help=".npy with the preprocessed float32 input")
    ap.add_argument("--out-dir", required=True, help="folder for <output_name>.npy files")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = ap.parse_args()

    with open(os.path.join(args.bundle, "manifest.json"), "r", encoding="utf-8") as f:
        manifest = json.load(f)
    core_path = os.path.join(args.bundle, manifest["core"]["file"])

    x = np.load(args.input, allow_pickle=False)
    if x.dtype != np.float32:
        sys.exit(f"input must be float32, got {x.dtype}")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(core_path, sess_options=opts, providers=["CPUExecutionProvider"])

    graph_inputs = sess.get_inputs()
    if len(graph_inputs) != 1:
        sys.exit(f"expected one graph input, found {len(graph_inputs)}")
    input_name = manifest["inputs"][0]["name"] if manifest.get("inputs") else graph_inputs[0].name
    if input_name != graph_inputs[0].name:
        sys.exit(f"manifest input {input_name!r} != graph input {graph_inputs[0].name!r}")

    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {input_name: np.ascontiguousarray(x)})
    os.makedirs(args.out_dir, exist_ok=True)
    for name, val in zip(names, outs):
        np.save(os.path.join(args.out_dir, f"{name}.npy"),
                np.ascontiguousarray(val, dtype=np.float32), allow_pickle=False)
        print(f"{name} {list(val.shape)}")


if __name__ == "__main__":
    main()
