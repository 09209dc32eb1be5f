#!/usr/bin/env python3
"""The synthetic core of `lethe bench` (cli/src/bench/workloads.rs), which runs

    .lethe/venv/bin/python scripts/make_identity_core.py --dim D --out CORE.onnx

It writes an ONNX model computing `features = Identity(image)` for float32 tensors
[batch, D]: a core whose features are its input, so that the benchmarks can choose the
features' dimension freely while the head and its state dir are those of a real bundle.
Needs the `onnx` package (scripts/setup.sh installs it into .lethe/venv).
"""

import argparse

import onnx
from onnx import TensorProto, helper

OPSET = 17
# The bundled cores' IR version. The `onnx` package would stamp its own, newer one, which an
# older ONNX Runtime refuses.
IR_VERSION = 8


def identity_model(dim):
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", dim])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim])
    node = helper.make_node("Identity", ["image"], ["features"], name="identity")
    graph = helper.make_graph([node], "identity", [image], [features])
    model = helper.make_model(
        graph,
        producer_name="lethe bench",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    ap = argparse.ArgumentParser(description="write the identity core of `lethe bench`")
    ap.add_argument("--dim", type=int, required=True, help="the features' dimension D")
    ap.add_argument("--out", required=True, help="where to write the ONNX model")
    args = ap.parse_args()
    if args.dim < 1:
        ap.error("--dim must be at least 1")
    onnx.save(identity_model(args.dim), args.out)


if __name__ == "__main__":
    main()
