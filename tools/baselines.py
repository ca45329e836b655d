#!/usr/bin/env python3
"""The baselines P-Tuning v2 is compared against, on the same backbone and data
as a `ptuning train` run: full fine-tuning (every weight trained, HF
AutoModelForSequenceClassification) and shallow prompt tuning (Lester et al.
2021: trainable embeddings in front of the input only, PEFT's PROMPT_TUNING),
both in PyTorch.

The protocol is ptuning's: the same jsonl splits, text pairs tokenized with
longest-first truncation to --max-seq-len, a linear schedule to 0, dropout
as the model has it, evaluation on dev after every epoch, and the best epoch's
dev metrics reported (ptuning's best/). Tasks: superglue/cb (accuracy and
macro-F1), superglue/rte and superglue/boolq (accuracy).

Usage (CPU is fine for CB):
    /work/venv/torch/bin/python tools/baselines.py --method finetune \
        --task superglue/cb --data ../shared/data/superglue/CB
    /work/venv/torch/bin/python tools/baselines.py --method prompt-tuning \
        --task superglue/cb --data ../shared/data/superglue/CB --lr 3e-2
Prints one JSON line per epoch and a last line with the best epoch.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

# (first text field, second text field, label names in ptuning's order)
TASKS = {
    "superglue/cb": ("premise", "hypothesis", ["entailment", "contradiction", "neutral"]),
    "superglue/rte": ("premise", "hypothesis", ["entailment", "not_entailment"]),
    "superglue/boolq": ("question", "passage", [False, True]),
}


def read_split(path, task):
    """Examples of a SuperGLUE jsonl split as (text_a, text_b, label index)."""
    a, b, labels = TASKS[task]
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append((row[a], row[b], labels.index(row["label"])))
            except (KeyError, ValueError) as e:
                sys.exit(f"{path}:{n}: expected {a}, {b} and a label in {labels}: {e}")
    return examples


def macro_f1(pred, gold, classes):
    f1s = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / classes


def batches(examples, tokenizer, size, max_len, shuffle_seed=None):
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for i in range(0, len(order), size):
        chunk = [examples[j] for j in order[i : i + size]]
        enc = tokenizer(
            [e[0] for e in chunk],
            [e[1] for e in chunk],
            truncation="longest_first",
            max_length=max_len,
            padding=True,
            return_tensors="pt",
        )
        enc["labels"] = torch.tensor([e[2] for e in chunk])
        yield enc


def build(method, model_dir, classes, prompt_len):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=classes)
    if method == "finetune":
        return model
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    config = PromptTuningConfig(
        task_type=TaskType.SEQ_CLS,
        num_virtual_tokens=prompt_len,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    return get_peft_model(model, config)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["finetune", "prompt-tuning"], required=True)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and val.jsonl")
    p.add_argument(
        "--model",
        default=os.environ.get(
            "PTUNING_MODEL_DIR", str(Path.home() / ".cache/ptuning/models/all-MiniLM-L6-v2")
        ),
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (finetune), 3e-2 (prompt-tuning)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=16, help="prompt-tuning: virtual tokens")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()

    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    lr = args.lr if args.lr is not None else (2e-5 if args.method == "finetune" else 3e-2)

    train = read_split(args.data / "train.jsonl", args.task)
    dev = read_split(args.data / "val.jsonl", args.task)
    classes = len(TASKS[args.task][2])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = build(args.method, args.model, classes, args.prompt_len)
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))

    best = None
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        for enc in batches(train, tokenizer, args.batch_size, args.max_seq_len, args.seed * 1000 + epoch):
            out = model(**enc)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            n = len(enc["labels"])
            loss_sum += out.loss.item() * n
            seen += n
        model.eval()
        pred, gold = [], []
        with torch.no_grad():
            for enc in batches(dev, tokenizer, 32, args.max_seq_len):
                gold += enc.pop("labels").tolist()
                pred += model(**enc).logits.argmax(-1).tolist()
        acc = sum(p == g for p, g in zip(pred, gold)) / len(gold)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "accuracy": acc}
        if args.task == "superglue/cb":
            row["f1"] = macro_f1(pred, gold, classes)
        print(json.dumps(row), flush=True)
        if best is None or acc > best["accuracy"]:
            best = row
    print(
        json.dumps(
            {
                "method": args.method,
                "task": args.task,
                "lr": lr,
                "trainable_parameters": sum(q.numel() for q in trainable),
                "seconds": round(time.time() - start, 1),
                "best": best,
            }
        )
    )


if __name__ == "__main__":
    main()
