#!/usr/bin/env python3
"""Golden cases for src/tasks/seqeval.rs: Python seqeval's own numbers.

Writes tests/fixtures/seqeval/cases.json: a list of cases, each with gold and
predicted tag sequences (a list of sentences, each a list of tags) and, for
both of seqeval's ways of cutting entities, what seqeval 1.2.2 reports:

  "default": seqeval.metrics.classification_report(gold, pred, output_dict=True)
             (mode=None, the conlleval-style chunker; what the official
             P-Tuning v2 code gets from load_metric("seqeval"));
  "strict":  classification_report(..., mode="strict", scheme=IOB2).

Each result is {"precision", "recall", "f1"} (the "micro avg" row, checked
here to equal precision_score / recall_score / f1_score), "accuracy"
(accuracy_score; null where seqeval divides by zero) and "per_type"
({type: {"precision", "recall", "f1", "support"}}), or {"error": "..."} where
seqeval raises (e.g. E-/S- tags in strict IOB2 mode, an empty tag).

One case ("conll2003-valid-perturbed") does not carry its gold tags: they are
the NER column of shared/data/conll2003/valid.txt (read as the official
tasks/ner/datasets/conll2003.py reads it), and "edits" lists the predicted
tags that differ from gold as [sentence, position, tag]. The data stays out
of the fixture; the Rust test (tests/tagging.rs) reads the gold tags with
the crate's own `ner/conll2003` reader, which also checks that reader.

Deterministic (fixed seeds): rerunning gives byte-identical output.

Usage:
    /work/venv/torch/bin/python tools/seqeval_golden.py \
        [--conll ../shared/data/conll2003/valid.txt] [--out tests/fixtures/seqeval/cases.json]
"""

import argparse
import json
import os
import random
import warnings

from seqeval.metrics import (accuracy_score, classification_report, f1_score,
                             precision_score, recall_score)
from seqeval.scheme import IOB2

warnings.filterwarnings("ignore")

AVG_ROWS = ("micro avg", "macro avg", "weighted avg")


def score(gold, pred, strict):
    kw = {"mode": "strict", "scheme": IOB2} if strict else {}
    try:
        report = classification_report(gold, pred, output_dict=True, **kw)
        p = precision_score(gold, pred, **kw)
        r = recall_score(gold, pred, **kw)
        f = f1_score(gold, pred, **kw)
    except Exception as e:  # seqeval raises: the Rust side must error too
        return {"error": f"{type(e).__name__}: {e}"}
    micro = report["micro avg"]
    assert (p, r, f) == (micro["precision"], micro["recall"], micro["f1-score"]), (p, r, f, micro)
    try:
        acc = float(accuracy_score(gold, pred))
    except ZeroDivisionError:
        acc = None
    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in report.items()
        if name not in AVG_ROWS
    }
    return {"precision": float(p), "recall": float(r), "f1": float(f), "accuracy": acc,
            "per_type": per_type}


def t(s):
    """'B-PER I-PER O' -> ['B-PER', 'I-PER', 'O']; '' -> []."""
    return s.split()


def hand_cases():
    c = []

    def add(name, gold, pred):
        c.append((name, [t(s) for s in gold], [t(s) for s in pred]))

    add("perfect", ["B-PER I-PER O B-LOC", "O B-ORG"], ["B-PER I-PER O B-LOC", "O B-ORG"])
    add("seqeval-docstring",
        ["O O O B-MISC I-MISC I-MISC O", "B-PER I-PER O"],
        ["O O B-MISC I-MISC I-MISC I-MISC O", "B-PER I-PER O"])
    add("boundary-errors",
        ["B-PER I-PER I-PER O B-LOC I-LOC"],
        ["B-PER I-PER O O B-LOC I-LOC"])
    add("type-errors", ["B-PER I-PER O B-LOC O B-ORG"], ["B-ORG I-ORG O B-LOC O B-PER"])
    add("pred-I-without-B", ["B-PER I-PER O B-LOC I-LOC O"], ["I-PER I-PER O I-LOC I-LOC O"])
    add("gold-I-without-B", ["I-PER I-PER O O I-ORG", "O I-LOC"], ["B-PER I-PER O O B-ORG", "O I-LOC"])
    add("I-of-other-type-after-B",
        ["B-PER I-PER O B-ORG I-ORG I-ORG"],
        ["B-PER I-LOC O B-ORG I-ORG I-PER"])
    add("adjacent-B-same-type", ["B-PER B-PER I-PER O"], ["B-PER I-PER I-PER O"])
    add("all-O", ["O O O", "O"], ["O O O", "O"])
    add("empty-predictions", ["B-PER I-PER O B-LOC", "B-ORG O"], ["O O O O", "O O"])
    add("spurious-predictions", ["O O O O", "O O"], ["B-PER I-PER O B-LOC", "I-ORG O"])
    add("empty-sentences", ["", "B-PER O", "", "B-LOC"], ["", "B-PER O", "", "B-ORG"])
    add("single-token-sentences", ["B-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "B-PER", "B-LOC", "I-LOC"])
    add("entity-at-sentence-edges",
        ["O B-PER", "I-PER O", "B-LOC"],
        ["O B-PER", "I-PER O", "I-LOC"])
    add("hyphenated-types (wnut17)",
        ["B-creative-work I-creative-work O B-person", "B-group O B-corporation"],
        ["B-creative-work I-creative-work O B-person", "B-group I-group B-corporation"])
    add("srl-tags (conll05)",
        ["B-A0 I-A0 B-V B-A1 I-A1 I-A1 B-AM-TMP", "B-R-A0 B-V B-C-A1 I-C-A1 O"],
        ["B-A0 I-A0 B-V B-A1 I-A1 O B-AM-TMP", "B-R-A0 B-V B-C-A1 I-C-A1 O"])
    add("many-types",
        ["B-PER O B-LOC I-LOC O B-ORG B-MISC I-MISC O B-PER I-PER",
         "B-LOC O O B-ORG I-ORG O B-MISC"],
        ["B-PER O B-LOC O O B-ORG B-MISC I-MISC O B-PER I-PER",
         "B-ORG O O B-ORG I-ORG O B-MISC"])
    add("I-after-O-after-I", ["I-PER O I-PER I-PER"], ["B-PER O B-PER I-PER"])
    add("same-span-other-type", ["B-PER I-PER", "B-LOC"], ["B-ORG I-ORG", "B-LOC"])
    add("bare-B-and-I", ["B I O B", "I I"], ["B I O I", "B I"])
    add("IOBES-tags (strict raises)",
        ["S-PER O B-LOC I-LOC E-LOC", "B-ORG I-ORG E-ORG"],
        ["S-PER O B-LOC E-LOC O", "S-ORG B-ORG E-ORG"])
    add("unknown-prefix (strict raises)", ["X-PER O B-LOC"], ["B-PER O B-LOC"])
    add("dot-tag", ["B-PER . I-PER O", ". B-LOC"], ["B-PER I-PER I-PER O", ". I-LOC"])
    add("trailing-dash-type", ["B-PER- I-PER- O B--LOC"], ["B-PER I-PER O B-LOC"])
    add("unicode-types", ["B-ORTÉ I-ORTÉ O B-人名"], ["B-ORTÉ I-ORTÉ O B-人名"])
    add("stale-chunk-start",
        ["B-LOC I-LOC", "X B-PER", "O"],
        ["B-LOC I-LOC", "O B-PER", "X"])
    add("long-entity",
        ["B-MISC " + "I-MISC " * 40 + "O"],
        ["B-MISC " + "I-MISC " * 20 + "B-MISC " + "I-MISC " * 19 + "O"])
    add("type-change-chain (I only)", ["I-PER I-LOC I-LOC I-PER O"], ["I-PER I-LOC I-LOC I-PER O"])
    # An empty tag: seqeval indexes chunk[0] / token[0] and raises.
    c.append(("empty-tag (raises)", [["B-PER", ""]], [["B-PER", "O"]]))
    return c


def random_iob2(rng, n_sent, types, max_len=25):
    """Random IOB2 gold with entities, and a noisy prediction (wrong types,
    shifted boundaries, dropped and spurious entities, stray I- tags)."""
    gold, pred = [], []
    for _ in range(n_sent):
        n = rng.randint(0, max_len)
        g = ["O"] * n
        i = 0
        while i < n:
            if rng.random() < 0.25:
                ty = rng.choice(types)
                ln = min(n - i, rng.choice([1, 1, 2, 2, 3, 4]))
                g[i] = "B-" + ty
                for j in range(i + 1, i + ln):
                    g[j] = "I-" + ty
                i += ln + rng.randint(0, 2)
            else:
                i += 1
        p = list(g)
        for k in range(n):
            r = rng.random()
            if r < 0.05:
                p[k] = "O"
            elif r < 0.09:
                p[k] = rng.choice(["B-", "I-"]) + rng.choice(types)
            elif r < 0.12 and p[k] != "O":
                p[k] = p[k][:2] + rng.choice(types)
        gold.append(g)
        pred.append(p)
    return gold, pred


def random_iobes(rng, n_sent, types, max_len=15):
    """Arbitrary tags from {O, B, I, E, S} x types: exercises every branch of
    the default chunker (strict IOB2 raises on E-/S-)."""
    tags = ["O"] + [f"{p}-{ty}" for p in "BIES" for ty in types]
    gold, pred = [], []
    for _ in range(n_sent):
        n = rng.randint(0, max_len)
        gold.append([rng.choice(tags) for _ in range(n)])
        pred.append([rng.choice(tags) for _ in range(n)])
    return gold, pred


def random_iob_messy(rng, n_sent, types, max_len=15):
    """Arbitrary tags from {O, B, I} x types (valid for strict mode, but
    with I- without B- and type changes everywhere)."""
    tags = ["O", "O", "O"] + [f"{p}-{ty}" for p in "BI" for ty in types]
    gold, pred = [], []
    for _ in range(n_sent):
        n = rng.randint(0, max_len)
        gold.append([rng.choice(tags) for _ in range(n)])
        pred.append([rng.choice(tags) for _ in range(n)])
    return gold, pred


def read_conll2003(path):
    """As the official tasks/ner/datasets/conll2003.py: -DOCSTART- and blank
    lines end a sentence; the NER tag is the 4th space-separated column."""
    sentences, tags = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("-DOCSTART-") or line == "" or line == "\n":
                if tags:
                    sentences.append(tags)
                    tags = []
            else:
                tags.append(line.split(" ")[3].rstrip())
    if tags:
        sentences.append(tags)
    return sentences


def perturb_conll(rng, gold):
    """A plausible tagger's errors on about 8% of the entities plus a few
    spurious ones; returns (pred, edits)."""
    types = ["PER", "LOC", "ORG", "MISC"]
    pred = [list(s) for s in gold]
    for s in pred:
        n = len(s)
        k = 0
        while k < n:
            if s[k].startswith("B-"):
                end = k + 1
                while end < n and s[end] == "I-" + s[k][2:]:
                    end += 1
                r = rng.random()
                if r < 0.02:  # wrong type
                    ty = rng.choice([x for x in types if x != s[k][2:]])
                    for j in range(k, end):
                        s[j] = s[j][:2] + ty
                elif r < 0.035:  # missed
                    for j in range(k, end):
                        s[j] = "O"
                elif r < 0.05 and end < n and s[end] == "O":  # too long
                    s[end] = "I-" + s[k][2:]
                elif r < 0.065 and end - k > 1:  # too short
                    s[end - 1] = "O"
                elif r < 0.08:  # B- lost: starts with I-
                    s[k] = "I-" + s[k][2:]
                k = end
            else:
                if s[k] == "O" and rng.random() < 0.004:  # spurious
                    s[k] = rng.choice(["B-", "I-"]) + rng.choice(types)
                k += 1
    edits = [[i, j, p[j]] for i, (g, p) in enumerate(zip(gold, pred)) for j in range(len(g))
             if g[j] != p[j]]
    return pred, edits


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--conll", default=os.path.join(root, "..", "shared", "data", "conll2003",
                                                    "valid.txt"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "seqeval",
                                                  "cases.json"))
    args = ap.parse_args()

    cases = []
    for name, gold, pred in hand_cases():
        cases.append({"name": name, "gold": gold, "pred": pred,
                      "default": score(gold, pred, False), "strict": score(gold, pred, True)})

    rng = random.Random(20240917)
    for name, gen, n in [("random-iob2-large", random_iob2, 150),
                         ("random-iob-messy", random_iob_messy, 60),
                         ("random-iobes (strict raises)", random_iobes, 40)]:
        gold, pred = gen(rng, n, ["PER", "LOC", "ORG", "MISC"])
        cases.append({"name": name, "gold": gold, "pred": pred,
                      "default": score(gold, pred, False), "strict": score(gold, pred, True)})

    if os.path.isfile(args.conll):
        gold = read_conll2003(args.conll)
        pred, edits = perturb_conll(random.Random(2003), gold)
        cases.append({"name": "conll2003-valid-perturbed", "gold_from": "conll2003/valid.txt",
                      "sentences": len(gold), "edits": edits,
                      "default": score(gold, pred, False), "strict": score(gold, pred, True)})
    else:
        print(f"note: {args.conll} not found, the CoNLL-2003 case is left out")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write('{"seqeval": "1.2.2", "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":"))
                           for c in cases))
        f.write("\n]}\n")
    print(f"wrote {len(cases)} cases to {args.out}")
    for c in cases:
        d, s = c["default"], c["strict"]
        print(f"  {c['name']:40s} default f1={d.get('f1', d.get('error'))!s:.40}  "
              f"strict f1={s.get('f1', s.get('error'))!s:.40}")


if __name__ == "__main__":
    main()
