#!/usr/bin/env python3
"""PyTorch peer of the ptuning benchmark: P-Tuning v2 or prompt tuning on a frozen HF BERT, CPU or GPU.

    /work/venv/torch/bin/python bench/torch_peer.py --model DIR --batch 16 --seq 128 \
        --prefix-len 16 [--method p-tuning-v2|prompt-tuning] [--prompt-impl peft|plain] \
        [--threads 2] [--warmup 2] [--iters 10] [--json] \
        [--device cpu|cuda] [--precision fp32|tf32|bf16]

On a GPU (eager, SDPA): fp32 with TF32 off, tf32 with torch's TF32 matmuls,
bf16 under torch.autocast(bfloat16) with the weights kept in f32, as ptuning's
bf16 keeps everything but the GEMM inputs in f32. Times are taken after
torch.cuda.synchronize().

What is measured (full-length sequences, no padding, random token ids from a
fixed seed, attn_implementation="sdpa"):
  * train_step_ms: median of model.train() (dropout on, backbone frozen) ->
    prefix table [P, L*2*H] on all layers with dropout(hidden_dropout_prob) on
    the prefix, as the official THUDM/P-tuning-v2 code does -> HF BertModel
    forward with the prefix as its key/value cache (DynamicCache, mask with P
    ones in front; HF shifts the position ids by P itself) -> pooled [CLS] ->
    dropout -> linear head (2 labels) -> cross-entropy -> backward -> AdamW
    step -> zero_grad;
  * infer_ms: median of the same forward (to logits) under torch.inference_mode(),
    model.eval();
  * rss_after_load_mb: RSS once the model, prefix, head and optimizer exist,
    before any step; peak_rss_mb: ru_maxrss after all runs (MB = 2**20 bytes).

--method prompt-tuning (`ptuning bench --method prompt-tuning`): shallow prompt
tuning, PEFT's PROMPT_TUNING, on the same frozen weights: a trainable [P, H]
prompt in front of each sequence's word embeddings, passed as inputs_embeds
with the mask extended by P ones and token_type_ids by P zeros (positions
numbered over all P+T rows, as HF numbers inputs_embeds), every layer on P+T
rows, no prompt dropout (the embeddings' dropout covers its rows), pooled
head on row 0 (pooler, dropout, linear), the same train step and inference
as above. By default (--prompt-impl peft) it is PEFT itself:
get_peft_model(BertForSequenceClassification, PromptTuningConfig(SEQ_CLS,
SAMPLE_VOCAB)), called with input_ids, attention_mask and token_type_ids, as
a user runs it (tools/baselines.py does). PEFT adds no work ptuning skips:
per step it looks up [1, P, H] and repeats it over the batch (its backward a
sum over the batch, as ptuning's reduce), concatenates the mask and token
types, and wraps the classifier in a ModulesToSaveWrapper (one Linear, the
same one call); the layers, the embeddings' backward over all P+T rows (to
reach the prompt's rows) and the head are HF's either way. --prompt-impl plain
is that model in plain torch (nn.Embedding(P, H) concatenated in front of
bert.embeddings.word_embeddings(input_ids), BertModel's pooler, dropout and a
linear head), the check on PEFT's wrapping: both give the same logits and
prompt gradients, and run the same aten ops (torch.profiler); on the 2-core
machine (batch 16 x 128, prompt 16, 2 threads, 2026-11-27) PEFT's train
step took 767-776 ms against 752-764 and its inference 272-274 ms against
262-264, 1-4% more (Python and a few small copies), about the spread
between runs, and to ptuning's advantage if anything.
"""

import argparse
import contextlib
import inspect
import json
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import transformers
from transformers import BertForSequenceClassification, BertModel, DynamicCache


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class PrefixTuned(nn.Module):
    """Frozen BertModel + P-Tuning v2 prefix (plain table, all layers) + pooled-CLS head."""

    def __init__(self, bert, prefix_len, num_labels):
        super().__init__()
        cfg = bert.config
        self.bert = bert
        self.P = prefix_len
        self.L = cfg.num_hidden_layers
        self.NH = cfg.num_attention_heads
        self.HD = cfg.hidden_size // cfg.num_attention_heads
        self.prefix = nn.Embedding(prefix_len, self.L * 2 * cfg.hidden_size)
        self.prefix_dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        for p in self.bert.parameters():
            p.requires_grad_(False)
        params = inspect.signature(bert.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def past_key_values(self, batch):
        past = self.prefix.weight.unsqueeze(0).expand(batch, -1, -1)
        past = past.reshape(batch, self.P, self.L * 2, self.NH, self.HD)
        past = self.prefix_dropout(past)
        if past.is_cuda and torch.is_autocast_enabled("cuda"):
            # bf16 keys and values from the model meet the prefix in the cache.
            past = past.to(torch.get_autocast_dtype("cuda"))
        layers = past.permute([2, 0, 3, 1, 4]).split(2)  # L x [2, B, NH, P, HD]
        # A fresh cache per forward: HF appends the token keys/values to it.
        return DynamicCache(ddp_cache_data=[(kv[0], kv[1]) for kv in layers])

    def forward(self, input_ids, attention_mask, token_type_ids):
        B = input_ids.shape[0]
        mask = torch.cat([torch.ones(B, self.P, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], dim=1)
        out = self.bert(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                        **{self.cache_kw: self.past_key_values(B)})
        return self.classifier(self.dropout(out.pooler_output))


class PromptTuned(nn.Module):
    """Frozen BertModel + shallow prompt (PEFT's PROMPT_TUNING semantics) + pooled head, in plain torch."""

    def __init__(self, bert, prompt_len, num_labels):
        super().__init__()
        cfg = bert.config
        self.bert = bert
        self.P = prompt_len
        self.prompt = nn.Embedding(prompt_len, cfg.hidden_size)
        with torch.no_grad():  # sampled from the vocabulary, as PEFT's SAMPLE_VOCAB and ptuning start it
            ids = torch.randint(0, cfg.vocab_size, (prompt_len,))
            self.prompt.weight.copy_(bert.embeddings.word_embeddings.weight[ids])
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        for p in self.bert.parameters():
            p.requires_grad_(False)

    def forward(self, input_ids, attention_mask, token_type_ids):
        B = input_ids.shape[0]
        words = self.bert.embeddings.word_embeddings(input_ids)
        prompt = self.prompt.weight.unsqueeze(0).expand(B, -1, -1).to(words.dtype)
        embeds = torch.cat([prompt, words], dim=1)
        mask = torch.cat([torch.ones(B, self.P, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], dim=1)
        types = torch.cat([torch.zeros(B, self.P, dtype=token_type_ids.dtype, device=token_type_ids.device),
                           token_type_ids], dim=1)
        out = self.bert(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types)
        return self.classifier(self.dropout(out.pooler_output))


class PeftPromptTuned(nn.Module):
    """PEFT's PROMPT_TUNING on BertForSequenceClassification, called as a user calls it; returns the logits."""

    def __init__(self, model_dir, prompt_len, num_labels):
        super().__init__()
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        clf = BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=num_labels, attn_implementation="sdpa", dtype=torch.float32)
        if clf.bert.pooler is None:
            sys.exit("model has no pooler")
        config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=prompt_len,
                                    prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        with warnings.catch_warnings():  # transformers' deprecation notes on what PEFT calls
            warnings.simplefilter("ignore", FutureWarning)
            self.peft = get_peft_model(clf, config)

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.peft(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def main():
    default_model = os.environ.get("PTUNING_MODEL_DIR") or str(
        Path.home() / ".cache" / "ptuning" / "models" / "all-MiniLM-L6-v2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model, help="HF BERT folder (config.json, model.safetensors)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prefix-len", type=int, default=16, help="P, the number of virtual tokens")
    ap.add_argument("--method", default="p-tuning-v2", choices=["p-tuning-v2", "prompt-tuning"])
    ap.add_argument("--prompt-impl", default="peft", choices=["peft", "plain"],
                    help="prompt-tuning: PEFT itself, or the same model in plain torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.device == "cuda":
        tf32 = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    elif args.precision != "fp32":
        sys.exit("--precision tf32/bf16 needs --device cuda")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.method == "prompt-tuning" and args.prompt_impl == "peft":
        model = PeftPromptTuned(args.model, args.prefix_len, args.labels)
        cfg = model.peft.config
        peer = f"peft {__import__('peft').__version__}"
    else:
        bert = BertModel.from_pretrained(args.model, attn_implementation="sdpa", dtype=torch.float32)
        cfg = bert.config
        if bert.pooler is None:
            sys.exit("model has no pooler")
        if args.method == "prompt-tuning":
            model, peer = PromptTuned(bert, args.prefix_len, args.labels), "plain torch"
        else:
            model, peer = PrefixTuned(bert, args.prefix_len, args.labels), "plain torch"
    if args.prefix_len + args.seq > cfg.max_position_embeddings:
        sys.exit(f"prefix_len + seq = {args.prefix_len + args.seq} > max_position_embeddings "
                 f"{cfg.max_position_embeddings} (HF numbers positions after the prefix, or over the "
                 "prompt's rows and the tokens')")
    model = model.to(device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in trainable.items() if not n.endswith(".bias")], "weight_decay": 0.01},
         {"params": [p for n, p in trainable.items() if n.endswith(".bias")], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
    )

    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.seq
    # Ids from 1000 up (past BERT's special and unused tokens), or from the
    # middle of a small test vocabulary, as `ptuning bench` draws them.
    low = min(1000, cfg.vocab_size // 2)
    input_ids = torch.randint(low, cfg.vocab_size, (B, T), generator=g).to(device)
    attention_mask = torch.ones(B, T, dtype=torch.int64, device=device)
    token_type_ids = torch.zeros(B, T, dtype=torch.int64, device=device)
    labels = torch.randint(0, args.labels, (B,), generator=g).to(device)

    rss_after_load = rss_mb()
    # Device memory in tensors (MiB), as `ptuning bench` counts its buffers.
    cuda = args.device == "cuda"
    after_load_mib = torch.cuda.memory_allocated() / 2**20 if cuda else None

    def train_step():
        model.train()
        with autocast:
            logits = model(input_ids, attention_mask, token_type_ids)
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def infer():
        model.eval()
        with torch.inference_mode(), autocast:
            return model(input_ids, attention_mask, token_type_ids)

    def timed(fn, n):
        ts = []
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append((time.perf_counter() - t0) * 1000.0)
        return ts

    timed(train_step, args.warmup)
    train_ms = timed(train_step, args.iters)
    timed(infer, args.warmup)
    infer_ms = timed(infer, args.iters)
    peak = peak_rss_mb()

    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "precision": args.precision,
        "threads": args.threads,
        "method": args.method,
        "peer": peer,
        "batch": B,
        "seq": T,
        "prefix_len": args.prefix_len,
        "train_step_ms": round(statistics.median(train_ms), 3),
        "infer_ms": round(statistics.median(infer_ms), 3),
        "rss_after_load_mb": round(rss_after_load, 1),
        "peak_rss_mb": round(peak, 1),
        "working_mb": round(peak - rss_after_load, 1),
        "device_after_load_mib": round(after_load_mib, 1) if cuda else None,
        "device_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"PyTorch peer  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"threads {args.threads}")
    print(f"model {args.model}")
    print(f"method {args.method} ({peer})")
    print(f"batch {B}  seq {T}  prefix_len {args.prefix_len}  warmup {args.warmup}  iters {args.iters}")
    rows = [
        ("train step (median)", f"{res['train_step_ms']:.1f} ms",
         f"min {min(train_ms):.1f} / max {max(train_ms):.1f}"),
        ("inference (median)", f"{res['infer_ms']:.1f} ms", f"min {min(infer_ms):.1f} / max {max(infer_ms):.1f}"),
        ("RSS after load", f"{res['rss_after_load_mb']:.1f} MB", ""),
        ("peak RSS", f"{res['peak_rss_mb']:.1f} MB", ""),
        ("working set", f"{res['working_mb']:.1f} MB", "peak - after load"),
    ]
    for name, val, extra in rows:
        print(f"  {name:22s} {val:>12s}   {extra}")


if __name__ == "__main__":
    main()
