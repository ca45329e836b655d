#!/usr/bin/env python3
"""Independent PyTorch reference for the ptuning engine: writes golden fixtures.

The forward pass is assembled from transformers' own BertModel / RobertaModel
submodules (embeddings, attention.self.{query,key,value}, attention.output,
intermediate, output, pooler); only the prefix attention core (concatenate the
prefix keys/values in front of the token keys/values, additive padding mask,
softmax, probs @ V) is written here in plain torch.  Everything is float32,
dropout is off (eval()), the backbone is frozen, and gradients / one AdamW step
are taken with torch autograd and torch.optim.AdamW.

Cross-checks done inside this script (the script fails if any disagrees by
more than 1e-5):
  * every case: each prefixed layer is re-run through HF's own BertLayer /
    RobertaLayer.forward with a DynamicCache that holds that layer's prefix
    keys/values and a 4-D additive mask (eager and sdpa attention);
  * cases with a prefix on all layers: HF's full model forward with
    `cache=DynamicCache(ddp_cache_data=[(K_l, V_l), ...])` (the 5.x name of
    `past_key_values`), a 2-D attention mask with P ones in front, and NO
    explicit position ids (HF shifts them itself by cache.get_seq_length()),
    comparing all hidden states, pooled output, logits, loss and gradients,
    with both attn_implementation="eager" and "sdpa";
  * the same all-layer cases also through PEFT prefix tuning
    (get_peft_model + PrefixTuningConfig, FEATURE_EXTRACTION task) with our
    prefix parameters copied into PEFT's prompt encoder.

Usage:
    /work/venv/torch/bin/python tools/reference.py [--model-dir DIR] [--out tests/fixtures]
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers
from transformers import BertConfig, BertModel, DynamicCache, RobertaConfig, RobertaModel

TOL = 1e-5

LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
CLASSIFIER_STD = 0.5


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------

TINY_COMMON = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    initializer_range=0.02,
)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

TINY_WORDS = [
    "the", "a", "is", "was", "cat", "dog", "sat", "on", "mat", "and", "of", "to", "in", "it",
    "good", "bad", "movie", "book", "play", "##ing", "##ed", "##s", "##er", "##ly", "not",
    "very", "this", "that", "he", "she", "they", "we", "you", "i", "run", "walk", "park",
    "day", "night", "red", "blue", "big", "small", "happy", "sad",
]

TINY_CORPUS = [
    "The cat sat on the mat.",
    "A dog is running in the park!",
    "She reads a good book, and he plays.",
    "It was raining today? Not very happy.",
    "Hello world: the quick brown fox jumps over the lazy dog.",
    "We walked 2 or 3 miles; they ran 10.",
    "This movie is bad, that one is good.",
    "Big red apples and small blue berries.",
] * 4


def build_bert_wordpiece(path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = list(BERT_SPECIALS)
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [c for c in "0123456789"]
    vocab += [c for c in ".,!?'-:;"]
    for w in TINY_WORDS:
        if w not in vocab:
            vocab.append(w)
    assert len(vocab) <= 120, len(vocab)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(BERT_SPECIALS)
    tok.save(str(path), pretty=True)
    return tok


def build_roberta_bpe(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=ROBERTA_SPECIALS,
                                  show_progress=False, initial_alphabet=[])
    tok.train_from_iterator(TINY_CORPUS, trainer)
    assert tok.get_vocab_size() <= 120, tok.get_vocab_size()
    for i, t in enumerate(ROBERTA_SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path), pretty=True)
    return tok


def randomize_tiny(model, seed):
    """Non-trivial weights so that tests catch missing biases / LayerNorm gammas."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("LayerNorm.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:  # Linear weight [out, in]
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]))
        pad = model.config.pad_token_id
        # nn.Embedding(padding_idx=...) convention: the padding rows are zero.
        model.embeddings.word_embeddings.weight[pad].zero_()
        if isinstance(model, RobertaModel):
            model.embeddings.position_embeddings.weight[pad].zero_()


def write_tiny_models(out):
    bert_dir = out / "tiny-bert"
    rob_dir = out / "tiny-roberta"
    bert_cfg = BertConfig(**TINY_COMMON, type_vocab_size=2, pad_token_id=0, layer_norm_eps=1e-12)
    rob_cfg = RobertaConfig(**TINY_COMMON, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, layer_norm_eps=1e-5)
    for cls, cfg, d, seed, build_tok in (
        (BertModel, bert_cfg, bert_dir, 1234, build_bert_wordpiece),
        (RobertaModel, rob_cfg, rob_dir, 4321, build_roberta_bpe),
    ):
        torch.manual_seed(seed)
        model = cls(cfg, add_pooling_layer=True)
        randomize_tiny(model, seed)
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d))
        os.chmod(d / "model.safetensors", 0o644)
        build_tok(d / "tokenizer.json")
    return bert_dir, rob_dir


def load_model(d):
    cfg = transformers.AutoConfig.from_pretrained(str(d))
    cls = {"bert": BertModel, "roberta": RobertaModel}[cfg.model_type]
    model = cls.from_pretrained(str(d), attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------
# Prefix encoder + head
# --------------------------------------------------------------------------------------


class PrefixEncoder(nn.Module):
    """THUDM/P-tuning-v2 PrefixEncoder: output [P, Ls*2*H]."""

    def __init__(self, P, H, n_layers, projection, hidden):
        super().__init__()
        self.P = P
        self.projection = projection
        if projection:
            self.embedding = nn.Embedding(P, H)
            self.trans = nn.Sequential(nn.Linear(H, hidden), nn.Tanh(), nn.Linear(hidden, n_layers * 2 * H))
        else:
            self.embedding = nn.Embedding(P, n_layers * 2 * H)

    def forward(self):
        tokens = torch.arange(self.P)
        x = self.embedding(tokens)
        return self.trans(x) if self.projection else x


def trainable_params(prefix, classifier):
    """Fixture name -> Parameter, in a fixed order."""
    out = {"prefix.embedding": prefix.embedding.weight}
    if prefix.projection:
        out["prefix.trans.0.weight"] = prefix.trans[0].weight
        out["prefix.trans.0.bias"] = prefix.trans[0].bias
        out["prefix.trans.2.weight"] = prefix.trans[2].weight
        out["prefix.trans.2.bias"] = prefix.trans[2].bias
    out["classifier.weight"] = classifier.weight
    out["classifier.bias"] = classifier.bias
    return out


def split_past(past, k, B, NH, HD):
    """Keys/values [B, NH, P, HD] of the k-th prefixed layer from past [P, Ls*2*H]."""
    P = past.shape[0]
    H = NH * HD
    key = past[:, (2 * k) * H:(2 * k + 1) * H].reshape(P, NH, HD).permute(1, 0, 2)
    val = past[:, (2 * k + 1) * H:(2 * k + 2) * H].reshape(P, NH, HD).permute(1, 0, 2)
    return key.unsqueeze(0).expand(B, NH, P, HD), val.unsqueeze(0).expand(B, NH, P, HD)


def official_split(past, B, NH, HD, n_layers):
    """The official P-tuning-v2 view/permute/split, used to assert our layout."""
    P = past.shape[0]
    pkv = past.unsqueeze(0).expand(B, -1, -1).reshape(B, P, n_layers * 2, NH, HD)
    return pkv.permute([2, 0, 3, 1, 4]).split(2)


def position_ids_for(model, input_ids, attention_mask, P):
    B, T = input_ids.shape
    if isinstance(model, RobertaModel):
        pad = model.config.pad_token_id
        m = attention_mask.long()
        pos = (torch.cumsum(m, dim=1) + P) * m + pad
        hf = model.embeddings.create_position_ids_from_input_ids(input_ids, pad, P)
        assert torch.equal(pos, hf), (pos, hf)
        return pos
    return (P + torch.arange(T)).unsqueeze(0).expand(B, T)


def prefix_attention(q, k, v, key_mask):
    """q [B,NH,T,HD], k/v [B,NH,S,HD], key_mask [B,S] (1 = visible) -> [B,NH,T,HD]."""
    HD = q.shape[-1]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (HD ** -0.5)
    neg = torch.finfo(scores.dtype).min
    scores = scores + (1.0 - key_mask.to(scores.dtype))[:, None, None, :] * neg
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v)


def reference_forward(model, prefix, classifier, batch, prefix_layers):
    cfg = model.config
    H = cfg.hidden_size
    NH = cfg.num_attention_heads
    HD = H // NH
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    B, T = ids.shape
    P = prefix.P if prefix_layers else 0

    past = prefix()
    pos = position_ids_for(model, ids, mask, P)
    h = model.embeddings(input_ids=ids, token_type_ids=tt, position_ids=pos)
    hidden = [h]
    for i, layer in enumerate(model.encoder.layer):
        sa = layer.attention.self
        q = sa.query(h).view(B, T, NH, HD).transpose(1, 2)
        k = sa.key(h).view(B, T, NH, HD).transpose(1, 2)
        v = sa.value(h).view(B, T, NH, HD).transpose(1, 2)
        key_mask = mask
        if i in prefix_layers:
            pk, pv = split_past(past, prefix_layers.index(i), B, NH, HD)
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv, v], dim=2)
            key_mask = torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], dim=1)
        ctx = prefix_attention(q, k, v, key_mask).transpose(1, 2).reshape(B, T, H)
        attn_out = layer.attention.output(ctx, h)
        h = layer.output(layer.intermediate(attn_out), attn_out)
        hidden.append(h)
    pooled = model.pooler(h) if model.pooler is not None else h[:, 0]
    logits = classifier(pooled)
    loss = F.cross_entropy(logits, batch["labels"])
    return dict(past=past, pos=pos, hidden=hidden, pooled=pooled, logits=logits, loss=loss)


# --------------------------------------------------------------------------------------
# Cross-checks against HF / PEFT
# --------------------------------------------------------------------------------------


REPORT = []


def assert_close(name, a, b, tol=TOL):
    """max|a - b| <= tol * max(1e-3, max|b|): 1e-5 relative to the tensor's own scale.

    (A plain absolute 1e-5 would be too loose for the prefix gradients, which are
    ~1e-4 on MiniLM, and too strict for MiniLM hidden states, which reach ~10.)
    """
    a = a.detach().float()
    b = b.detach().float()
    assert a.shape == b.shape, (name, a.shape, b.shape)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(1e-3, b.abs().max().item() if b.numel() else 0.0)
    rel = diff / scale
    REPORT.append((name, diff, rel))
    if rel > tol:
        raise AssertionError(f"cross-check {name}: max abs diff {diff:.3e} = {rel:.2e} of max|ref| "
                             f"{scale:.3g} > {tol:.0e}")
    return rel


def check_layers_with_hf(model, ref, batch, prefix_layers, P):
    """Re-run each layer through HF's own BertLayer/RobertaLayer.forward.

    Prefixed layers get a DynamicCache holding their prefix K/V (HF concatenates
    it in front of the token K/V inside self-attention) and a 4-D mask over
    [P + T] keys; other layers get the 4-D mask over T keys and no cache.
    """
    cfg = model.config
    H, NH = cfg.hidden_size, cfg.num_attention_heads
    HD = H // NH
    mask = batch["attention_mask"]
    B, T = mask.shape
    worst = 0.0
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        for i, layer in enumerate(model.encoder.layer):
            h_in = ref["hidden"][i].detach()
            if i in prefix_layers:
                pk, pv = split_past(ref["past"].detach(), prefix_layers.index(i), B, NH, HD)
                data = [(None, None)] * cfg.num_hidden_layers
                data[i] = (pk.contiguous(), pv.contiguous())
                cache = DynamicCache(ddp_cache_data=data)
                key_mask = torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], dim=1)
            else:
                cache = None
                key_mask = mask
            add = (1.0 - key_mask.float())[:, None, None, :] * torch.finfo(torch.float32).min
            add = add.expand(B, 1, T, key_mask.shape[1])
            out = layer(h_in, attention_mask=add, cache=cache)
            out = out[0] if isinstance(out, tuple) else out
            worst = max(worst, assert_close(f"{impl} layer {i}", out, ref["hidden"][i + 1]))
    model.set_attn_implementation("eager")
    return worst


def check_full_model_with_hf_cache(model, params, ref, batch, prefix_layers, P, classifier):
    """All layers prefixed: HF's full forward with a DynamicCache as past key values."""
    cfg = model.config
    L = cfg.num_hidden_layers
    assert prefix_layers == list(range(L))
    H, NH = cfg.hidden_size, cfg.num_attention_heads
    HD = H // NH
    mask = batch["attention_mask"]
    B, T = mask.shape
    names = list(params)
    ref_grads = torch.autograd.grad(ref["loss"], [params[n] for n in names], retain_graph=True)
    # Our layout must be exactly the official view(B,P,2L,NH,HD).permute([2,0,3,1,4]).split(2).
    for l, kv in enumerate(official_split(ref["past"], B, NH, HD, L)):
        pk, pv = split_past(ref["past"], l, B, NH, HD)
        assert torch.equal(kv[0], pk) and torch.equal(kv[1], pv)
    worst = 0.0
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        past = ref["past"]  # same graph: gradients flow back into the prefix params
        data = [split_past(past, l, B, NH, HD) for l in range(L)]
        cache = DynamicCache(ddp_cache_data=data)
        assert cache.get_seq_length() == P
        full_mask = torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], dim=1)
        out = model(input_ids=batch["input_ids"], attention_mask=full_mask,
                    token_type_ids=batch["token_type_ids"], cache=cache, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == L + 1
        for i in range(L + 1):
            worst = max(worst, assert_close(f"hf-cache {impl} hidden_states.{i}", hs[i], ref["hidden"][i]))
        worst = max(worst, assert_close(f"hf-cache {impl} pooled", out.pooler_output, ref["pooled"]))
        logits = classifier(out.pooler_output)
        loss = F.cross_entropy(logits, batch["labels"])
        worst = max(worst, assert_close(f"hf-cache {impl} logits", logits, ref["logits"]))
        worst = max(worst, assert_close(f"hf-cache {impl} loss", loss, ref["loss"]))
        grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
        for n, g, rg in zip(names, grads, ref_grads):
            worst = max(worst, assert_close(f"hf-cache {impl} grad.{n}", g, rg))
    model.set_attn_implementation("eager")
    return worst


def check_with_peft(model_dir, params, ref, batch, P, projection, hidden, classifier):
    """All layers prefixed: PEFT prefix tuning with our parameters copied in.

    peft 0.21 + transformers 5.24 quirks: the SEQ_CLS task refuses BERT ("Model
    does not support past key values") because BertModel.forward now names the
    argument `cache` (past_key_values is only a deprecated alias), and the
    FEATURE_EXTRACTION task drops token_type_ids with a warning.  So we use
    FEATURE_EXTRACTION on BertModel/RobertaModel, put the token_type_ids back
    with a forward pre-hook on the base model, and apply our head to
    pooler_output.
    """
    import warnings

    from peft import PrefixTuningConfig, TaskType, get_peft_model

    base = load_model(model_dir)
    cfg = base.config
    tt = batch["token_type_ids"]

    def put_back_token_types(module, args, kwargs):
        kwargs["token_type_ids"] = tt
        return args, kwargs

    base.register_forward_pre_hook(put_back_token_types, with_kwargs=True)
    pcfg = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=P,
                              prefix_projection=projection,
                              encoder_hidden_size=hidden if projection else cfg.hidden_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(base, pcfg)
        pm.eval()
        enc = pm.prompt_encoder["default"]
        with torch.no_grad():
            enc.embedding.weight.copy_(params["prefix.embedding"])
            if projection:
                enc.transform[0].weight.copy_(params["prefix.trans.0.weight"])
                enc.transform[0].bias.copy_(params["prefix.trans.0.bias"])
                enc.transform[2].weight.copy_(params["prefix.trans.2.weight"])
                enc.transform[2].bias.copy_(params["prefix.trans.2.bias"])
        out = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 output_hidden_states=True)
    worst = 0.0
    for i, h in enumerate(out.hidden_states):
        worst = max(worst, assert_close(f"peft hidden_states.{i}", h, ref["hidden"][i]))
    worst = max(worst, assert_close("peft pooled", out.pooler_output, ref["pooled"]))
    logits = classifier(out.pooler_output)
    worst = max(worst, assert_close("peft logits", logits, ref["logits"]))
    loss = F.cross_entropy(logits, batch["labels"])
    worst = max(worst, assert_close("peft loss", loss, ref["loss"]))
    peft_params = [enc.embedding.weight]
    our = ["prefix.embedding"]
    if projection:
        peft_params += [enc.transform[0].weight, enc.transform[0].bias, enc.transform[2].weight,
                        enc.transform[2].bias]
        our += ["prefix.trans.0.weight", "prefix.trans.0.bias", "prefix.trans.2.weight", "prefix.trans.2.bias"]
    grads = torch.autograd.grad(loss, peft_params)
    ref_grads = torch.autograd.grad(ref["loss"], [params[n] for n in our], retain_graph=True)
    for n, g, rg in zip(our, grads, ref_grads):
        worst = max(worst, assert_close(f"peft grad.{n}", g, rg))
    return worst


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


def random_batch(kind, lengths, seed, num_labels, vocab=120):
    """Right-padded random ids with the model's special tokens at both ends."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    if kind == "bert":
        pad, cls, sep = 0, 2, 3
    else:
        pad, cls, sep = 1, 0, 2
    ids = torch.full((B, T), pad, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    tt = torch.zeros((B, T), dtype=torch.int64)
    for b, n in enumerate(lengths):
        assert n >= 2
        body = torch.randint(5, vocab, (n - 2,), generator=g)
        ids[b, 0] = cls
        ids[b, 1:n - 1] = body
        ids[b, n - 1] = sep
        mask[b, :n] = 1
        if kind == "bert" and n >= 5:
            # sentence pair: [CLS] a.. [SEP] b.. [SEP]
            cut = 1 + (n - 2) // 2
            ids[b, cut] = sep
            tt[b, cut + 1:n] = 1
    labels = torch.randint(0, num_labels, (B,), generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=labels)


MINILM_PAIRS_PLAIN = [
    ("A man is playing a guitar.", "Someone plays an instrument."),
    ("The weather is lovely today.", "It is raining heavily and the streets of the city are flooded."),
]
MINILM_PAIRS_SUBSET = [
    ("A cat sits.", "It sleeps."),
    ("How old are you?", "Your age?"),
    ("Stocks fell sharply.", "Investors worried."),
]


def tokenized_batch(model_dir, pairs, labels):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(a, b) for a, b in pairs]
    T = max(len(e.ids) for e in encs)
    pad = tok.token_to_id("[PAD]")
    B = len(encs)
    ids = torch.full((B, T), pad, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    tt = torch.zeros((B, T), dtype=torch.int64)
    for b, e in enumerate(encs):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        mask[b, :n] = 1
        tt[b, :n] = torch.tensor(e.type_ids)
    lens = [len(e.ids) for e in encs]
    assert len(set(lens)) > 1, "want different lengths"
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                labels=torch.tensor(labels, dtype=torch.int64))


def run_case(name, model_name, model_dir, batch, P, projection, hidden, prefix_layers, num_labels,
             seed, out_dir):
    torch.manual_seed(seed)
    model = load_model(model_dir)
    cfg = model.config
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    prefix_layers = sorted(prefix_layers)
    prefix = PrefixEncoder(P, H, len(prefix_layers), projection, hidden)
    classifier = nn.Linear(H, num_labels)
    with torch.no_grad():
        # Larger than nn.Linear's default so logits are O(1) and the prefix
        # gradients are not vanishingly small (the fixture stores the init anyway).
        classifier.weight.normal_(0.0, CLASSIFIER_STD)
        classifier.bias.normal_(0.0, 0.1)
    prefix.train(False)
    classifier.train(False)
    params = trainable_params(prefix, classifier)
    init = {n: p.detach().clone() for n, p in params.items()}

    ref = reference_forward(model, prefix, classifier, batch, prefix_layers)

    # ---- cross-checks ----
    REPORT.clear()
    worst = check_layers_with_hf(model, ref, batch, prefix_layers, P)
    checks = ["hf-layers"]
    if prefix_layers == list(range(L)):
        worst = max(worst, check_full_model_with_hf_cache(model, params, ref, batch, prefix_layers, P, classifier))
        worst = max(worst, check_with_peft(model_dir, params, ref, batch, P, projection, hidden, classifier))
        checks += ["hf-cache(eager,sdpa)", "peft"]

    # ---- gradients + one AdamW step ----
    names = list(params)
    grads = torch.autograd.grad(ref["loss"], [params[n] for n in names])
    for n, g in zip(names, grads):
        params[n].grad = g.clone()
    decay = [p for n, p in params.items() if not n.endswith(".bias")]
    no_decay = [p for n, p in params.items() if n.endswith(".bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS, foreach=False,
    )
    opt.step()

    tensors = {k: v.contiguous() for k, v in batch.items()}
    for n in names:
        tensors[n] = init[n]
    tensors["prefix.past"] = ref["past"].detach()
    for i, h in enumerate(ref["hidden"]):
        tensors[f"hidden_states.{i}"] = h.detach()
    tensors["pooled"] = ref["pooled"].detach()
    tensors["logits"] = ref["logits"].detach()
    tensors["loss"] = ref["loss"].detach().reshape(())
    for n, g in zip(names, grads):
        tensors[f"grad.{n}"] = g.detach()
    for n in names:
        tensors[f"step.{n}"] = params[n].detach()
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        if k not in batch:
            assert v.dtype == torch.float32, (k, v.dtype)

    B, T = batch["input_ids"].shape
    meta = {
        "model": model_name,
        "prefix_len": P,
        "prefix_projection": projection,
        "prefix_hidden_size": hidden if projection else None,
        "prefix_layers": prefix_layers,
        "num_labels": num_labels,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "betas": list(BETAS),
        "eps": EPS,
        "batch": B,
        "seq": T,
    }
    cases = out_dir / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    st = cases / f"{name}.safetensors"
    # No metadata: safetensors writes it from a hash map, in an order that changes
    # between runs, and we want byte-identical files on regeneration.
    save_file(tensors, str(st))
    with open(cases / f"{name}.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{name:28s} loss={ref['loss'].item():.6f}  checks={'+'.join(checks)}  "
          f"worst rel diff={worst:.1e}  {st.stat().st_size / 1024:.1f} KiB", file=sys.stderr)
    top = max(REPORT, key=lambda r: r[2])
    top_abs = max(REPORT, key=lambda r: r[1])
    print(f"{'':28s} {len(REPORT)} comparisons; worst relative: {top[0]} ({top[2]:.1e}); "
          f"worst absolute: {top_abs[0]} ({top_abs[1]:.1e})", file=sys.stderr)


def main():
    default_dir = os.environ.get("PTUNING_MODEL_DIR") or str(
        Path.home() / ".cache" / "ptuning" / "models" / "all-MiniLM-L6-v2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_dir, help="all-MiniLM-L6-v2 folder (config.json, "
                    "model.safetensors, tokenizer.json)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bert_dir, rob_dir = write_tiny_models(out)

    run_case("tiny_bert_plain", "tiny-bert", bert_dir,
             random_batch("bert", [7, 5, 2], seed=11, num_labels=3),
             P=4, projection=False, hidden=None, prefix_layers=[0, 1, 2], num_labels=3, seed=101, out_dir=out)
    run_case("tiny_bert_mlp_subset", "tiny-bert", bert_dir,
             random_batch("bert", [6, 3, 5], seed=12, num_labels=2),
             P=3, projection=True, hidden=16, prefix_layers=[1, 2], num_labels=2, seed=102, out_dir=out)
    run_case("tiny_roberta_plain_subset", "tiny-roberta", rob_dir,
             random_batch("roberta", [6, 4], seed=13, num_labels=3),
             P=5, projection=False, hidden=None, prefix_layers=[2], num_labels=3, seed=103, out_dir=out)
    run_case("tiny_roberta_mlp", "tiny-roberta", rob_dir,
             random_batch("roberta", [5, 5, 3], seed=14, num_labels=3),
             P=3, projection=True, hidden=8, prefix_layers=[0, 1, 2], num_labels=3, seed=104, out_dir=out)

    mdir = Path(args.model_dir)
    if not (mdir / "model.safetensors").exists():
        sys.exit(f"MiniLM model not found at {mdir} (set --model-dir or PTUNING_MODEL_DIR)")
    run_case("minilm_plain", "all-MiniLM-L6-v2", mdir,
             tokenized_batch(mdir, MINILM_PAIRS_PLAIN, [2, 0]),
             P=8, projection=False, hidden=None, prefix_layers=list(range(6)), num_labels=3, seed=105, out_dir=out)
    run_case("minilm_mlp_subset", "all-MiniLM-L6-v2", mdir,
             tokenized_batch(mdir, MINILM_PAIRS_SUBSET, [1, 0, 1]),
             P=6, projection=True, hidden=64, prefix_layers=[4, 5], num_labels=2, seed=106, out_dir=out)


if __name__ == "__main__":
    main()
