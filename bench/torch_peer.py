#!/usr/bin/env python3
"""PyTorch peer of the ptuning benchmark: P-Tuning v2 on a frozen HF BertModel, CPU or GPU.

    /work/venv/torch/bin/python bench/torch_peer.py --model DIR --batch 16 --seq 128 \
        --prefix-len 16 [--threads 2] [--warmup 2] [--iters 10] [--json] \
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
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import transformers
from transformers import BertModel, DynamicCache


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


def main():
    default_model = os.environ.get("PTUNING_MODEL_DIR") or str(
        Path.home() / ".cache" / "ptuning" / "models" / "all-MiniLM-L6-v2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model, help="HF BERT folder (config.json, model.safetensors)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--prefix-len", type=int, default=16)
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

    bert = BertModel.from_pretrained(args.model, attn_implementation="sdpa", dtype=torch.float32)
    cfg = bert.config
    if args.prefix_len + args.seq > cfg.max_position_embeddings:
        sys.exit(f"prefix_len + seq = {args.prefix_len + args.seq} > max_position_embeddings "
                 f"{cfg.max_position_embeddings} (HF shifts positions by the prefix length)")
    if bert.pooler is None:
        sys.exit("model has no pooler")
    model = PrefixTuned(bert, args.prefix_len, args.labels).to(device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in trainable.items() if not n.endswith(".bias")], "weight_decay": 0.01},
         {"params": [p for n, p in trainable.items() if n.endswith(".bias")], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
    )

    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch, args.seq
    input_ids = torch.randint(1000, cfg.vocab_size, (B, T), generator=g).to(device)
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
