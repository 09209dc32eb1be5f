#!/usr/bin/env python3
"""Reference tokenization and features of a text bundle (Python `tokenizers` + ONNX Runtime).

    python tests/py/text_reference.py --bundle DIR (--text S ... | --lines FILE)
        [--out-dir D] [--batch N] [--threads T]
    python tests/py/text_reference.py --bundle DIR --write-fixture FILE.json

Tokenizes as the bundle's manifest (version 2) says in `preprocessing.text`: the bundle's
tokenizer file with special tokens, truncation to `max_length` tokens (keeping the first),
padding to the longest text of each batch (or to `max_length`) with `pad_id`, mask 0.

Prints one JSON line per text: {"text", "ids"} with the unpadded token ids. With --out-dir it
also runs the core on the texts in batches of N (default: all at once, padded together) and
writes <output>.npy for every graph output (features.npy: float32 [n, 384]) and, when the
texts made one batch, <input>.npy for every core input as fed (int64 [n, L]).
With --write-fixture it writes the tokenizer test fixture (real tweets from
tests/data/tweets_test.txt and constructed edge cases, each with its ids; a padded batch).

Needs numpy, onnxruntime and tokenizers.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import tokenizers

FIELDS = {"ids": "ids", "attention_mask": "attention_mask", "type_ids": "type_ids"}
DTYPES = {"int64": np.int64, "int32": np.int32}

# Constructed texts for the tokenizer fixture: each exercises one step of BERT's tokenizer.
EDGE_CASES = [
    "",
    "   \t  ",
    "Café crème brûlée at the Ærø hotel, naïve résumé!",  # accents stripped (NFD, no Mn)
    "e\u0301 vs \u00e9 and Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",  # combining mark, full width
    "I \u2764\ufe0f this \U0001F602\U0001F602 #blessed",  # emoji: [UNK], variation selector
    "東京は雨です。今日も",  # CJK ideographs split one by one
    "zero\u200bwidth no\u00a0break soft\u00adhyphen bell\u0007 nul\u0000x "
    "tab\tnew\nline",
    "[CLS] literal [SEP] and [PAD] [MASK] [UNK] tokens",  # added tokens match in raw text
    "Don't STOP!!! can't won't... $3.14, 1,000 & 50% @user #HashTag http://t.co/AbC12",
    "x" * 120 + " antidisestablishmentarianism",  # a word over 100 chars becomes [UNK]
    " ".join(["unbelievably"] * 70),  # over 128 tokens: truncated, [SEP] kept last
]


def read_lines(path):
    """Lines as Rust's str::lines() gives them: split at LF, one trailing CR dropped."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_manifest(bundle):
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    if m.get("version") != 2 or "text" not in m.get("preprocessing", {}):
        sys.exit(f"{bundle}: not a version-2 manifest with text preprocessing")
    return m


def load_tokenizer(bundle, manifest):
    spec = manifest["preprocessing"]["text"]
    path = os.path.join(bundle, spec["tokenizer"])
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != spec["tokenizer_sha256"]:
        sys.exit(f"{path}: sha256 {digest}, the manifest says {spec['tokenizer_sha256']}")
    tok = tokenizers.Tokenizer.from_file(path)
    tok.enable_truncation(max_length=spec["max_length"], stride=0,
                          strategy="longest_first", direction="right")
    length = {"longest": None, "max_length": spec["max_length"]}[spec["padding"]]
    pad_token = tok.id_to_token(spec["pad_id"])
    tok.enable_padding(direction="right", pad_id=spec["pad_id"], pad_type_id=0,
                       pad_token=pad_token, length=length)
    return tok


def unpadded_ids(tok, manifest, texts):
    add = manifest["preprocessing"]["text"]["add_special_tokens"]
    out = []
    for t in texts:
        e = tok.encode(t, add_special_tokens=add)
        out.append([i for i, m in zip(e.ids, e.attention_mask) if m == 1])
    return out


def core_inputs(tok, manifest, texts):
    """The core's inputs for one batch of texts, by input name."""
    spec = manifest["preprocessing"]["text"]
    encs = tok.encode_batch(list(texts), add_special_tokens=spec["add_special_tokens"])
    dtypes = {i["name"]: DTYPES[i["dtype"]] for i in manifest["inputs"]}
    return {name: np.array([getattr(e, FIELDS[field]) for e in encs], dtype=dtypes[name])
            for name, field in spec["inputs"].items()}


def session(bundle, manifest, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.path.join(bundle, manifest["core"]["file"]),
                                sess_options=opts, providers=["CPUExecutionProvider"])


def run_core(sess, tok, manifest, texts, batch):
    names = [o.name for o in sess.get_outputs()]
    outs = {n: [] for n in names}
    for i in range(0, len(texts), batch):
        res = sess.run(names, core_inputs(tok, manifest, texts[i:i + batch]))
        for n, r in zip(names, res):
            outs[n].append(r)
    return {n: np.concatenate(v) for n, v in outs.items()}


def write_fixture(bundle, manifest, tok, path):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "data", "tweets_test.txt"), encoding="utf-8") as f:
        tweets = f.read().split("\n")[:16]
    texts = tweets + EDGE_CASES
    ids = unpadded_ids(tok, manifest, texts)
    batch_texts = tweets[:4] + [EDGE_CASES[0]]
    batch = core_inputs(tok, manifest, batch_texts)
    about = ("Token ids of the minilm-l6-sentiment bundle's tokenizer, from Python tokenizers "
             f"{tokenizers.__version__} (tests/py/text_reference.py --write-fixture). The "
             "first 16 texts are tweets_test.txt lines 1-16; the others are constructed edge "
             "cases. `ids` are unpadded; `batch` is one padded batch as the core receives it.")
    spec = manifest["preprocessing"]["text"]
    rows = {"texts": batch_texts, **{name: v.tolist() for name, v in batch.items()}}
    # one case, or one row of the batch, per line: easy to read and to diff
    out = ["{",
           f' "about": {json.dumps(about)},',
           f' "tokenizer_sha256": {json.dumps(spec["tokenizer_sha256"])},',
           f' "max_length": {spec["max_length"]},',
           ' "cases": [',
           ",\n".join(f'  {json.dumps({"text": t, "ids": i})}' for t, i in zip(texts, ids)),
           " ],",
           ' "batch": {',
           ",\n".join(f'  {json.dumps(k)}: [\n' + ",\n".join(f"   {json.dumps(r)}" for r in v)
                      + "\n  ]" for k, v in rows.items()),
           " }",
           "}"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    with open(path, encoding="utf-8") as f:
        json.load(f)  # the hand-made layout is still JSON
    print(f"wrote {path}: {len(texts)} texts, tokenizers {tokenizers.__version__}")


def main():
    ap = argparse.ArgumentParser(description="reference tokens and features of a text bundle")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    ap.add_argument("--lines", help="a UTF-8 file with one text per line")
    ap.add_argument("--out-dir", help="folder for <output>.npy (and inputs for one batch)")
    ap.add_argument("--batch", type=int, help="texts per core run (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--write-fixture", help="write the tokenizer fixture JSON here and stop")
    args = ap.parse_args()

    manifest = read_manifest(args.bundle)
    tok = load_tokenizer(args.bundle, manifest)
    if args.write_fixture:
        write_fixture(args.bundle, manifest, tok, args.write_fixture)
        return
    texts = list(args.text)
    if args.lines:
        texts += read_lines(args.lines)
    if not texts:
        sys.exit("no texts: give --text or --lines")
    for t, ids in zip(texts, unpadded_ids(tok, manifest, texts)):
        print(json.dumps({"text": t, "ids": ids}))
    if args.out_dir:
        batch = args.batch or len(texts)
        os.makedirs(args.out_dir, exist_ok=True)
        outs = run_core(session(args.bundle, manifest, args.threads), tok, manifest, texts,
                        batch)
        if batch >= len(texts):
            outs.update(core_inputs(tok, manifest, texts))
        for name, v in outs.items():
            np.save(os.path.join(args.out_dir, f"{name}.npy"), np.ascontiguousarray(v),
                    allow_pickle=False)


if __name__ == "__main__":
    main()
