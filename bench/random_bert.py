#!/usr/bin/env python3
"""Writes a randomly initialised BERT model folder (config.json and
model.safetensors, pooler included) for speed work: the values do not change
the speed, so bert-base and bert-large need no download.

    python3 bench/random_bert.py --size base|large --out DIR
"""

import argparse

import torch
from transformers import BertConfig, BertModel

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **SIZES[args.size])
    BertModel(config, add_pooling_layer=True).save_pretrained(args.out, safe_serialization=True)
    print(f"wrote a random bert-{args.size} to {args.out}")


if __name__ == "__main__":
    main()
