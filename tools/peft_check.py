#!/usr/bin/env python3
"""Loads an adapter exported by `ptuning export --format peft` with PEFT itself
and writes the logits PEFT computes, for tests/peft.rs (`logits_match_peft`).

Writes into --out (default tests/fixtures/peft):
  adapter/                    the exported adapter (copied unless it is already there)
  inputs.json                 the texts, [text] or [text, pair] per row
  peft_logits.safetensors     input_ids, token_type_ids, attention_mask [B,T] int64
                              (right padding) and logits [B,C] float32
  README.md

Regenerate (CPU, seconds; deterministic):

    cargo test --release --test peft -- --ignored write_peft_fixture_adapter
    /work/venv/torch/bin/python tools/peft_check.py

How PEFT is run (peft 0.21, transformers 5.24): PEFT's SEQ_CLS task refuses
BERT ("Model does not support past key values": BertModel.forward names the
argument `cache` now), so the adapter is loaded with task FEATURE_EXTRACTION on
a plain BertModel (PeftModel.from_pretrained, config overridden, no
modules_to_save), which drops token_type_ids: a forward pre-hook puts them
back. The head is then applied by hand from the exported tensors:
logits = pooler_output @ W^T + b (BertModel's pooler is tanh(dense(h_cls))).
"""

import argparse
import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TEXTS = [
    ["the cat sat on the mat"],
    ["a good movie", "not very bad"],
    ["dog"],
    ["she is walking in the park at night, and it is a big red day!"],
    ["they play", "we run"],
]


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", default=str(root / "tests/fixtures/peft/adapter"))
    ap.add_argument("--model-dir", default=str(root / "tests/fixtures/tiny-bert"))
    ap.add_argument("--out", default=str(root / "tests/fixtures/peft"))
    args = ap.parse_args()

    from peft import PeftConfig, PeftModel, TaskType
    from tokenizers import Tokenizer
    from transformers import BertModel

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = Path(args.out)
    adapter = Path(args.adapter)
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    if adapter.resolve() != (out / "adapter").resolve():
        for name in ["adapter_config.json", "adapter_model.safetensors"]:
            shutil.copy(adapter / name, out / "adapter" / name)

    # Inputs, tokenized by the model's own tokenizer.json, right-padded.
    tok = Tokenizer.from_file(str(Path(args.model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(t[0], t[1]) if len(t) == 2 else tok.encode(t[0]) for t in TEXTS]
    T = max(len(e.ids) for e in encs)
    B = len(encs)
    input_ids = torch.zeros(B, T, dtype=torch.int64)
    token_type_ids = torch.zeros(B, T, dtype=torch.int64)
    attention_mask = torch.zeros(B, T, dtype=torch.int64)
    for i, e in enumerate(encs):
        n = len(e.ids)
        input_ids[i, :n] = torch.tensor(e.ids)
        token_type_ids[i, :n] = torch.tensor(e.type_ids)
        attention_mask[i, :n] = 1

    base = BertModel.from_pretrained(args.model_dir, attn_implementation="eager")
    base.eval()

    def put_back_token_types(module, a, kwargs):
        kwargs["token_type_ids"] = token_type_ids
        return a, kwargs

    base.register_forward_pre_hook(put_back_token_types, with_kwargs=True)
    config = PeftConfig.from_pretrained(str(adapter))
    assert config.peft_type == "PREFIX_TUNING", config.peft_type
    config.task_type = TaskType.FEATURE_EXTRACTION
    config.modules_to_save = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(base, str(adapter), config=config)
        pm.eval()
        # PEFT really holds the exported table.
        weights = load_file(str(adapter / "adapter_model.safetensors"))
        table = pm.prompt_encoder["default"].embedding.weight
        assert torch.equal(table.detach(), weights["prompt_embeddings"]), "PEFT changed the table"
        with torch.no_grad():
            o = pm(input_ids=input_ids, attention_mask=attention_mask)
    w = weights["base_model.classifier.weight"]
    b = weights["base_model.classifier.bias"]
    logits = (o.pooler_output @ w.T + b).float().contiguous()

    save_file(
        {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "logits": logits,
        },
        str(out / "peft_logits.safetensors"),
    )
    (out / "inputs.json").write_text(json.dumps(TEXTS, indent=1) + "\n")
    (out / "README.md").write_text(
        "# PEFT fixture\n\n"
        "Written by `tools/peft_check.py`; do not edit by hand.\n\n"
        "`adapter/`: `ptuning export --format peft` of the deterministic checkpoint in\n"
        "`tests/peft.rs` (`fixture_source`: tiny-bert, P = 4 on all 3 layers, reparameterized\n"
        "prefix folded on export, 3 labels). `peft_logits.safetensors`: the texts of\n"
        "`inputs.json` tokenized by tiny-bert's tokenizer.json (right padding), and the\n"
        "logits PEFT 0.21 computes with the adapter loaded by `PeftModel.from_pretrained`\n"
        "(FEATURE_EXTRACTION on BertModel, token_type_ids restored by a pre-hook; head\n"
        "applied to `pooler_output` from the exported tensors).\n"
    )
    print(f"wrote {out}: logits {tuple(logits.shape)}")
    print(logits)


if __name__ == "__main__":
    main()
