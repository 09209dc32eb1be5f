"""What both bundle scripts (models/*/make_bundle.py) do alike: export the core to ONNX and check
it, open it in ONNX Runtime, and write the manifest.

Needs torch, onnx and onnxruntime. The scripts import it from the folder above their own.
"""

import hashlib
import json
import os

OPSET = 17
CORE_FILE = "core.onnx"


def export_core(module, dummy, out_dir, output_names):
    """Exports `module` (input `image`, the batch axis dynamic) to OUT_DIR/core.onnx with the
    TorchScript exporter, opset 17, constant folding on; checks it with onnx's full checker.
    Prints the opset, size and sha256; returns (path, sha256)."""
    import onnx
    import torch

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CORE_FILE)
    dynamic = {n: {0: "batch"} for n in ["image"] + output_names}
    torch.onnx.export(module, (dummy,), path, input_names=["image"],
                      output_names=output_names, dynamic_axes=dynamic, opset_version=OPSET,
                      do_constant_folding=True, dynamo=False)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    print("onnx opset:", [(o.domain or "ai.onnx", o.version) for o in model.opset_import])
    with open(path, "rb") as f:
        onnx_bytes = f.read()
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    print(f"{CORE_FILE}: {len(onnx_bytes)} bytes, sha256 {sha}")
    return path, sha


def cpu_session(path):
    """An ONNX Runtime session of the core on the CPU with 2 threads; prints its outputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for o in sess.get_outputs():
        print(f"  output {o.name}: {o.type} {o.shape}")
    return sess


def write_manifest(out_dir, manifest):
    """Writes OUT_DIR/manifest.json (2-space indent, a final newline); returns its path."""
    path = os.path.join(out_dir, "manifest.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path
