#!/usr/bin/env python3
"""Loads an adapter exported by `ptuning export --format peft` with PEFT itself
and writes the logits PEFT computes, for tests/peft.rs (`logits_match_peft`;
with `--method prompt-tuning`, `prompt_tuning_logits_match_peft`).

Writes into --out (default tests/fixtures/peft, or tests/fixtures/peft_prompt_tuning
with --method prompt-tuning):
  adapter/                    the exported adapter (copied unless it is already there)
  inputs.json                 the texts, [text] or [text, pair] per row
  peft_logits.safetensors     input_ids, token_type_ids, attention_mask [B,T] int64
                              (right padding) and logits [B,C] float32
  README.md

Regenerate (CPU, seconds; deterministic):

    cargo test --release --test peft -- --ignored write_peft_fixture_adapter
    /work/venv/torch/bin/python tools/peft_check.py

    cargo test --release --test peft -- --ignored write_peft_prompt_tuning_fixture_adapter
    /work/venv/torch/bin/python tools/peft_check.py --method prompt-tuning

How PEFT is run (peft 0.21, transformers 5.24), prefix tuning (PREFIX_TUNING,
the default --method p-tuning-v2): PEFT's SEQ_CLS task refuses
BERT ("Model does not support past key values": BertModel.forward names the
argument `cache` now), so the adapter is loaded with task FEATURE_EXTRACTION on
a plain BertModel (PeftModel.from_pretrained, config overridden, no
modules_to_save), which drops token_type_ids: a forward pre-hook puts them
back. The head is then applied by hand from the exported tensors:
logits = pooler_output @ W^T + b (BertModel's pooler is tanh(dense(h_cls))).

Prompt tuning (PROMPT_TUNING, --method prompt-tuning): exactly as a user
would, the adapter as exported (its config unchanged, task SEQ_CLS) loaded by
PeftModel.from_pretrained on BertForSequenceClassification(num_labels=3):
PeftModelForSequenceClassification puts the P prompt embeddings in front of
the word embeddings, the mask gets P ones and token_type_ids P zeros in
front (PEFT's own SEQ_CLS path; nothing is hooked), HF computes the position
ids, and the logits are PEFT's own: its `modules_to_save` copy of the
classifier holds the exported head (checked: equal to the exported tensors,
while the base model's classifier keeps its random init).
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


def tokenize(model_dir):
    """TEXTS tokenized by the model's own tokenizer.json, right-padded."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
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
    return input_ids, token_type_ids, attention_mask


def prefix_tuning_logits(adapter, model_dir, input_ids, token_type_ids, attention_mask):
    """PREFIX_TUNING: FEATURE_EXTRACTION on BertModel, the head applied by hand."""
    from peft import PeftConfig, PeftModel, TaskType
    from transformers import BertModel

    base = BertModel.from_pretrained(model_dir, attn_implementation="eager")
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
    return (o.pooler_output @ w.T + b).float().contiguous()


def prompt_tuning_logits(adapter, model_dir, input_ids, token_type_ids, attention_mask):
    """PROMPT_TUNING: the exported folder as is, SEQ_CLS, PEFT's own classifier."""
    from peft import PeftConfig, PeftModel, PeftModelForSequenceClassification
    from peft.utils.other import ModulesToSaveWrapper
    from transformers import BertForSequenceClassification

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    C = weights["base_model.classifier.bias"].shape[0]
    config = PeftConfig.from_pretrained(str(adapter))
    assert config.peft_type == "PROMPT_TUNING", config.peft_type
    assert config.task_type == "SEQ_CLS", config.task_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=C, attn_implementation="eager")
        pm = PeftModel.from_pretrained(base, str(adapter))
    pm.eval()
    assert isinstance(pm, PeftModelForSequenceClassification), type(pm)
    # PEFT really holds the exported table and head, and uses its own copy
    # of the classifier (modules_to_save), not the base model's random one.
    table = pm.prompt_encoder["default"].embedding.weight
    assert torch.equal(table.detach(), weights["prompt_embeddings"]), "PEFT changed the table"
    head = pm.base_model.classifier
    assert isinstance(head, ModulesToSaveWrapper), type(head)
    assert head.active_adapters == ["default"], head.active_adapters
    used = head.modules_to_save["default"]
    assert torch.equal(used.weight.detach(), weights["base_model.classifier.weight"]), "head weight"
    assert torch.equal(used.bias.detach(), weights["base_model.classifier.bias"]), "head bias"
    assert not torch.equal(head.original_module.weight.detach(), used.weight.detach())
    with torch.no_grad():
        o = pm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    return o.logits.float().contiguous()


README = {
    "p-tuning-v2": (
        "# PEFT fixture\n\n"
        "Written by `tools/peft_check.py`; do not edit by hand.\n\n"
        "`adapter/`: `ptuning export --format peft` of the deterministic checkpoint in\n"
        "`tests/peft.rs` (`fixture_source`: tiny-bert, P = 4 on all 3 layers, reparameterized\n"
        "prefix folded on export, 3 labels). `peft_logits.safetensors`: the texts of\n"
        "`inputs.json` tokenized by tiny-bert's tokenizer.json (right padding), and the\n"
        "logits PEFT 0.21 computes with the adapter loaded by `PeftModel.from_pretrained`\n"
        "(FEATURE_EXTRACTION on BertModel, token_type_ids restored by a pre-hook; head\n"
        "applied to `pooler_output` from the exported tensors).\n"
    ),
    "prompt-tuning": (
        "# PEFT prompt-tuning fixture\n\n"
        "Written by `tools/peft_check.py --method prompt-tuning`; do not edit by hand.\n\n"
        "`adapter/`: `ptuning export --format peft` (PROMPT_TUNING) of the deterministic\n"
        "checkpoint in `tests/peft.rs` (`prompt_tuning_fixture_source`: tiny-bert, P = 4\n"
        "input embeddings [4, 32], 3 labels). `peft_logits.safetensors`: the texts of\n"
        "`inputs.json` tokenized by tiny-bert's tokenizer.json (right padding; input_ids,\n"
        "token_type_ids, attention_mask are the T real columns, without the prompt), and\n"
        "the logits PEFT 0.21 computes with the adapter as exported, loaded by\n"
        "`PeftModel.from_pretrained` on `BertForSequenceClassification` (task SEQ_CLS:\n"
        "PEFT's own prompt, mask and token-type handling, and its `modules_to_save`\n"
        "classifier holding the exported head).\n"
    ),
}


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["p-tuning-v2", "prompt-tuning"], default="p-tuning-v2",
                    help="the adapter's kind: PREFIX_TUNING or PROMPT_TUNING (and the default folders)")
    ap.add_argument("--adapter", help="default: OUT/adapter")
    ap.add_argument("--model-dir", default=str(root / "tests/fixtures/tiny-bert"))
    ap.add_argument("--out", help="default: tests/fixtures/peft or tests/fixtures/peft_prompt_tuning")
    args = ap.parse_args()
    default_out = {"p-tuning-v2": "tests/fixtures/peft", "prompt-tuning": "tests/fixtures/peft_prompt_tuning"}
    out = Path(args.out) if args.out else root / default_out[args.method]
    adapter = Path(args.adapter) if args.adapter else out / "adapter"

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    if adapter.resolve() != (out / "adapter").resolve():
        for name in ["adapter_config.json", "adapter_model.safetensors"]:
            shutil.copy(adapter / name, out / "adapter" / name)

    input_ids, token_type_ids, attention_mask = tokenize(args.model_dir)
    run = prefix_tuning_logits if args.method == "p-tuning-v2" else prompt_tuning_logits
    logits = run(adapter, args.model_dir, input_ids, token_type_ids, attention_mask)

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
    (out / "README.md").write_text(README[args.method])
    print(f"wrote {out}: logits {tuple(logits.shape)}")
    print(logits)

if __name__ == "__main__":
    main()
