#!/usr/bin/env python3
"""Golden fixtures for shallow prompt tuning (Lester et al. 2021; PEFT's PROMPT_TUNING).

A trainable soft prompt E [P, H] is put in front of the word embeddings of a
frozen BERT / RoBERTa encoder:

    inputs_embeds  = cat(E, word_embeddings(input_ids))     [B, S = P + T, H]
    attention_mask = cat(ones(B, P), attention_mask)
    token_type_ids = cat(zeros(B, P), token_type_ids)
    position_ids   = arange(S) (BERT) / pad + 1 + arange(S) (RoBERTa, every row,
                     padding included: HF's create_position_ids_from_inputs_embeds)

then HF's own embeddings (sum + LayerNorm), layers and pooler run on it (the
pooler reads row 0 of the extended sequence, i.e. the first prompt row).  The
reference is one `model(inputs_embeds=..., position_ids=..., ...)` call on the
base model; float32, eval() (no dropout), backbone frozen.  Heads:
  * "sequence": logits = Linear(H, C)(pooled), loss = cross_entropy(logits, labels);
  * "tokens":   logits = Linear(H, C)(last_hidden[:, P:]) [B, T, C], loss =
                cross_entropy over tags with ignore_index=-100 (padding and the
                first token of each row are -100).
Gradients w.r.t. [E, classifier.weight, classifier.bias] by autograd, then one
torch.optim.AdamW step (weight decay on weights only), as tools/reference.py.

Cross-checks done before writing (fail above 1e-5 relative, reference.assert_close):
  * HF sdpa attention with NO explicit position ids (HF computes them from
    inputs_embeds): all hidden states, pooled;
  * PEFT get_peft_model + PromptTuningConfig(FEATURE_EXTRACTION) on a freshly
    loaded base model, E copied into prompt_encoder["default"].embedding.  PEFT
    0.21's FEATURE_EXTRACTION forward drops token_type_ids (with a warning) and
    position_ids; a forward pre-hook on the base model puts back
    cat(zeros(B, P), token_type_ids), which is what PEFT's SEQ_CLS / TOKEN_CLS
    paths do themselves.  Position ids are left to HF.  Compared: all hidden
    states (all rows), pooled, logits, loss, and the gradients of the three
    params through PEFT's graph;
  * PEFT's own task heads, token_type_ids passed natively: SEQ_CLS on
    Bert/RobertaForSequenceClassification (for RoBERTa the classification head's
    dense layer gets the pooler's weights, so dense+tanh on row 0 = the pooler)
    and TOKEN_CLS on BertForTokenClassification (logits[:, P:]), our classifier
    copied in: logits, loss, gradients.

Also PEFT's TEXT start (prompt_tuning_text_init.json): the token ids and
table PromptTuningInit.TEXT gives on MiniLM, for `--prompt-init text:...`.

Usage:
    /work/venv/torch/bin/python tools/prompt_tuning_reference.py [--model-dir DIR] [--out tests/fixtures] [--only-text-init]
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers
from transformers import RobertaModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402
from reference import assert_close  # noqa: E402


def extend(batch, P):
    """Mask and token types with the P prompt rows in front (ones / zeros)."""
    mask, tt = batch["attention_mask"], batch["token_type_ids"]
    B = mask.shape[0]
    return (torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], dim=1),
            torch.cat([torch.zeros(B, P, dtype=tt.dtype), tt], dim=1))


def position_ids_for(model, B, S):
    start = model.config.pad_token_id + 1 if isinstance(model, RobertaModel) else 0
    return torch.arange(start, start + S).unsqueeze(0).expand(B, S).contiguous()


def head_loss(head, classifier, hidden_last, pooled, labels, P):
    if head == "sequence":
        logits = classifier(pooled)
        return logits, F.cross_entropy(logits, labels)
    logits = classifier(hidden_last[:, P:])
    return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def reference_forward(model, prompt, classifier, batch, head, pos):
    ids = batch["input_ids"]
    B, P = ids.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), model.embeddings.word_embeddings(ids)], dim=1)
    mask, tt = extend(batch, P)
    out = model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt, position_ids=pos,
                output_hidden_states=True)
    logits, loss = head_loss(head, classifier, out.hidden_states[-1], out.pooler_output, batch["labels"], P)
    return dict(hidden=out.hidden_states, pooled=out.pooler_output, logits=logits, loss=loss)


def compare(tag, r, got, head, ref_grads=None, params=None):
    worst = 0.0
    if "hidden" in got:
        for i, h in enumerate(got["hidden"]):
            worst = max(worst, assert_close(f"{tag} hidden_states.{i}", h, r["hidden"][i]))
        if head == "sequence":
            worst = max(worst, assert_close(f"{tag} pooled", got["pooled"], r["pooled"]))
    worst = max(worst, assert_close(f"{tag} logits", got["logits"], r["logits"]))
    worst = max(worst, assert_close(f"{tag} loss", got["loss"], r["loss"]))
    if ref_grads is not None:
        grads = torch.autograd.grad(got["loss"], list(params.values()))
        for n, g in zip(params, grads):
            worst = max(worst, assert_close(f"{tag} grad.{n}", g, ref_grads[n]))
    return worst


def peft_model(base, P, task_type):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    cfg = base.config
    pcfg = PromptTuningConfig(task_type=task_type, num_virtual_tokens=P, token_dim=cfg.hidden_size,
                              num_transformer_submodules=1, num_attention_heads=cfg.num_attention_heads,
                              num_layers=cfg.num_hidden_layers, prompt_tuning_init=PromptTuningInit.RANDOM)
    pm = get_peft_model(base, pcfg)
    pm.eval()
    return pm


def check_peft_feature_extraction(model_dir, E, classifier, batch, head, r, ref_grads):
    from peft import TaskType

    P = E.shape[0]
    base = ref.load_model(model_dir)
    _, tt = extend(batch, P)

    def put_back_token_types(module, args, kwargs):
        assert kwargs.get("token_type_ids") is None and kwargs.get("position_ids") is None
        kwargs["token_type_ids"] = tt
        return args, kwargs

    base.register_forward_pre_hook(put_back_token_types, with_kwargs=True)
    pm = peft_model(base, P, TaskType.FEATURE_EXTRACTION)
    emb = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(E)
    out = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    logits, loss = head_loss(head, classifier, out.last_hidden_state, out.pooler_output, batch["labels"], P)
    got = dict(hidden=out.hidden_states, pooled=out.pooler_output, logits=logits, loss=loss)
    params = {"prefix.embedding": emb, "classifier.weight": classifier.weight, "classifier.bias": classifier.bias}
    return compare("peft", r, got, head, ref_grads, params)


def check_peft_task_head(model_dir, E, classifier, batch, head, r, ref_grads, pooler):
    """PEFT's SEQ_CLS / TOKEN_CLS path with HF's task model, token_type_ids passed as is."""
    from peft import TaskType

    P, C = E.shape[0], classifier.weight.shape[0]
    auto = (transformers.AutoModelForSequenceClassification if head == "sequence"
            else transformers.AutoModelForTokenClassification)
    tm = auto.from_pretrained(str(model_dir), num_labels=C, attn_implementation="eager")
    tm.eval()
    out_layer = tm.classifier
    with torch.no_grad():
        if tm.config.model_type == "roberta":  # RobertaClassificationHead: dense, tanh, out_proj on row 0
            tm.classifier.dense.weight.copy_(pooler.dense.weight)
            tm.classifier.dense.bias.copy_(pooler.dense.bias)
            out_layer = tm.classifier.out_proj
        out_layer.weight.copy_(classifier.weight)
        out_layer.bias.copy_(classifier.bias)
    pm = peft_model(tm, P, TaskType.SEQ_CLS if head == "sequence" else TaskType.TOKEN_CLS)
    emb = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(E)
    # modules_to_save: PEFT trains a copy of the classifier.
    trained = pm.base_model.classifier.modules_to_save["default"]
    if tm.config.model_type == "roberta":
        trained = trained.out_proj
    out = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             token_type_ids=batch["token_type_ids"])
    logits = out.logits if head == "sequence" else out.logits[:, P:]
    labels = batch["labels"]
    loss = (F.cross_entropy(logits, labels) if head == "sequence"
            else F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), ignore_index=-100))
    params = {"prefix.embedding": emb, "classifier.weight": trained.weight, "classifier.bias": trained.bias}
    return compare(f"peft-{'seq' if head == 'sequence' else 'token'}-cls", r, dict(logits=logits, loss=loss),
                   head, ref_grads, params)


def token_tags(mask, C, g):
    tags = torch.randint(0, C, mask.shape, generator=g)
    tags[mask == 0] = -100
    tags[:, 0] = -100  # first real token of each row (right padding: column 0)
    return tags


def run_case(name, model_name, model_dir, batch, P, num_labels, seed, out_dir, head="sequence"):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ref.load_model(model_dir)
    cfg = model.config
    H = cfg.hidden_size
    batch = dict(batch)
    if head == "tokens":
        batch["labels"] = token_tags(batch["attention_mask"], num_labels, g)
    if model_name.startswith("tiny"):
        E = nn.Parameter(0.5 * torch.randn(P, H, generator=g))
    else:
        init_ids = torch.randint(1000, cfg.vocab_size, (P,), generator=g)
        E = nn.Parameter(model.embeddings.word_embeddings.weight[init_ids].detach().clone())
    classifier = nn.Linear(H, num_labels)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(num_labels, H, generator=g) * ref.CLASSIFIER_STD)
        classifier.bias.copy_(torch.randn(num_labels, generator=g) * 0.1)
    classifier.train(False)
    params = {"prefix.embedding": E, "classifier.weight": classifier.weight, "classifier.bias": classifier.bias}
    init = {n: p.detach().clone() for n, p in params.items()}

    B, T = batch["input_ids"].shape
    pos = position_ids_for(model, B, P + T)
    r = reference_forward(model, E, classifier, batch, head, pos)
    names = list(params)
    grads = torch.autograd.grad(r["loss"], [params[n] for n in names], retain_graph=True)
    ref_grads = dict(zip(names, grads))

    # ---- cross-checks ----
    ref.REPORT.clear()
    model.set_attn_implementation("sdpa")
    sdpa = reference_forward(model, E, classifier, batch, head, None)
    model.set_attn_implementation("eager")
    worst = compare("hf-sdpa-auto-pos", r, sdpa, head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worst = max(worst, check_peft_feature_extraction(model_dir, E, classifier, batch, head, r, ref_grads))
        worst = max(worst, check_peft_task_head(model_dir, E, classifier, batch, head, r, ref_grads, model.pooler))
    checks = ["hf-sdpa", "peft-feature-extraction", "peft-seq-cls" if head == "sequence" else "peft-token-cls"]

    # ---- one AdamW step ----
    for n, gr in zip(names, grads):
        params[n].grad = gr.clone()
    decay = [p for n, p in params.items() if not n.endswith(".bias")]
    no_decay = [p for n, p in params.items() if n.endswith(".bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ref.WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ref.LR, betas=ref.BETAS, eps=ref.EPS, foreach=False,
    )
    opt.step()

    tensors = {k: v for k, v in batch.items()}
    tensors.update(init)
    tensors["position_ids"] = pos
    for i, h in enumerate(r["hidden"]):
        tensors[f"hidden_states.{i}"] = h
    if head == "sequence":
        tensors["pooled"] = r["pooled"]
    tensors["logits"] = r["logits"]
    tensors["loss"] = r["loss"].reshape(())
    for n in names:
        tensors[f"grad.{n}"] = ref_grads[n]
    for n in names:
        tensors[f"step.{n}"] = params[n]
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype == (torch.int64 if k in batch or k == "position_ids" else torch.float32), (k, v.dtype)

    meta = {
        "model": model_name,
        "prefix_len": P,
        "prefix_projection": False,
        "prefix_hidden_size": None,
        "prefix_layers": [],
        "num_labels": num_labels,
        "lr": ref.LR,
        "weight_decay": ref.WEIGHT_DECAY,
        "betas": list(ref.BETAS),
        "eps": ref.EPS,
        "batch": B,
        "seq": T,
        "method": "prompt-tuning",
        "head": head,
    }
    cases = out_dir / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    st = cases / f"{name}.safetensors"
    save_file(tensors, str(st))  # no metadata: byte-identical on rerun
    with open(cases / f"{name}.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{name:30s} loss={r['loss'].item():.6f}  checks={'+'.join(checks)}  "
          f"worst rel diff={worst:.1e}  {st.stat().st_size / 1024:.1f} KiB", file=sys.stderr)
    top = max(ref.REPORT, key=lambda x: x[2])
    top_abs = max(ref.REPORT, key=lambda x: x[1])
    print(f"{'':30s} {len(ref.REPORT)} comparisons; worst relative: {top[0]} ({top[2]:.1e}); "
          f"worst absolute: {top_abs[0]} ({top_abs[1]:.1e})", file=sys.stderr)


TEXT_INIT = "Does the premise entail the hypothesis?"


def text_init_cases(model_dir, out_dir):
    """PEFT's PromptTuningInit.TEXT on MiniLM: the token ids it starts from
    (the tokenizer's, special tokens included, repeated or cut to P) and a
    digest of the table, for `--prompt-init text:...`.  Checked first: the
    table is word_embeddings[ids]."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    cases = []
    for P in (16, 4):
        base = BertModel.from_pretrained(model_dir)
        cfg = base.config
        pcfg = PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=P,
                                  token_dim=cfg.hidden_size, num_transformer_submodules=1,
                                  num_attention_heads=cfg.num_attention_heads,
                                  num_layers=cfg.num_hidden_layers,
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=TEXT_INIT,
                                  tokenizer_name_or_path=str(model_dir))
        pm = get_peft_model(base, pcfg)
        table = pm.prompt_encoder["default"].embedding.weight.detach()
        ids = tok(TEXT_INIT)["input_ids"]
        ids = (ids * (P // len(ids) + 1))[:P]
        word = base.get_input_embeddings().weight.detach()
        assert torch.equal(table, word[torch.tensor(ids)]), "PEFT's TEXT table is not word_embeddings[ids]"
        cases.append({"num_virtual_tokens": P, "token_ids": ids,
                      "table_sum": float(table.double().sum()), "table_row0": table[0, :8].tolist()})
        print(f"prompt_tuning_text_init P={P}: ids {ids}")
    path = Path(out_dir) / "cases" / "prompt_tuning_text_init.json"
    path.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "text": TEXT_INIT, "cases": cases}, indent=1) + "\n")


def main():
    default_dir = os.environ.get("PTUNING_MODEL_DIR") or str(
        Path.home() / ".cache" / "ptuning" / "models" / "all-MiniLM-L6-v2")
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_dir, help="all-MiniLM-L6-v2 folder")
    ap.add_argument("--out", default=str(fixtures))
    ap.add_argument("--only-text-init", action="store_true",
                    help="write only prompt_tuning_text_init.json (PEFT's TEXT start)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out = Path(args.out)
    mdir = Path(args.model_dir)

    def need_minilm():
        if not (mdir / "model.safetensors").exists():
            sys.exit(f"MiniLM model not found at {mdir} (set --model-dir or PTUNING_MODEL_DIR)")

    if args.only_text_init:
        need_minilm()
        text_init_cases(mdir, out)
        return
    # The tiny models are read from the checked-in fixtures (written by reference.py).
    bert_dir, rob_dir = fixtures / "tiny-bert", fixtures / "tiny-roberta"

    run_case("prompt_tuning_tiny_bert", "tiny-bert", bert_dir,
             ref.random_batch("bert", [7, 5, 2], seed=21, num_labels=3), P=4, num_labels=3, seed=201, out_dir=out)
    run_case("prompt_tuning_tiny_roberta", "tiny-roberta", rob_dir,
             ref.random_batch("roberta", [6, 4, 3], seed=22, num_labels=2), P=3, num_labels=2, seed=202, out_dir=out)
    run_case("prompt_tuning_tiny_bert_tokens", "tiny-bert", bert_dir,
             ref.random_batch("bert", [6, 4, 5], seed=23, num_labels=4), P=3, num_labels=4, seed=204, out_dir=out,
             head="tokens")

    need_minilm()
    text_init_cases(mdir, out)
    run_case("prompt_tuning_minilm", "all-MiniLM-L6-v2", mdir,
             ref.tokenized_batch(mdir, ref.MINILM_PAIRS_PLAIN, [2, 0]), P=5, num_labels=3, seed=203, out_dir=out)


if __name__ == "__main__":
    main()
