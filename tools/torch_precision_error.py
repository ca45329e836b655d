"""How far PyTorch's own bf16 and tf32 are from the fp32 fixtures.

The CUDA engine's bf16 and tf32 are tested against the fp32 fixtures of
tests/fixtures/cases by the relative error ||got - want|| / ||want|| of the
last hidden state and of the logits (tests/cuda.rs, `tolerances`). This
prints the same measure for PyTorch running the same cases as a user of
each precision runs them:
- bf16: the backbone converted with `.to(torch.bfloat16)` (weights,
  activations and residual stream in bf16), the prefix table (the
  fixture's `prefix.past`) in bf16, and the classifier in f32 on the
  pooled output, as the engine keeps its head;
- tf32: everything f32, but every matrix product's operands rounded to
  tf32's 10 mantissa bits (to nearest, ties to even), as
  `torch.backends.cuda.matmul.allow_tf32 = True` has a GPU's tensor cores
  read them; this machine has none, so the rounding is emulated on the CPU.
The forward is reference.py's.

    venv/bin/python tools/torch_precision_error.py [--model-dir DIR]

`--model-dir`: all-MiniLM-L6-v2, as for reference.py.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

CASES = ["tiny_bert_plain", "tiny_bert_mlp_subset", "tiny_roberta_plain_subset", "tiny_roberta_mlp",
         "minilm_plain", "minilm_mlp_subset"]


class FixedPrefix:
    """reference_forward's prefix: the fixture's table, P rows."""

    def __init__(self, past):
        self.P = past.shape[0]
        self.past = past

    def __call__(self):
        return self.past


def to_tf32(x):
    """x (f32) rounded to tf32: 10 of f32's 23 mantissa bits, to nearest, ties to even."""
    bits = x.contiguous().view(torch.int32)
    kept = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return kept.view(torch.float32)


@contextlib.contextmanager
def tf32_products():
    """Within it, torch.matmul and F.linear (every nn.Linear) read tf32 operands."""
    linear, matmul = torch.nn.functional.linear, torch.matmul
    torch.nn.functional.linear = lambda x, w, b=None: linear(to_tf32(x), to_tf32(w), b)
    torch.matmul = lambda a, b: matmul(to_tf32(a), to_tf32(b))
    try:
        yield
    finally:
        torch.nn.functional.linear, torch.matmul = linear, matmul


def rel_err(got, want):
    got, want = got.double().flatten(), want.double().flatten()
    return ((got - want).norm() / want.norm()).item()


def main():
    default_dir = os.environ.get("PTUNING_MODEL_DIR") or str(
        Path.home() / ".cache" / "ptuning" / "models" / "all-MiniLM-L6-v2")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=default_dir, help="all-MiniLM-L6-v2 folder")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    print(f"{'case':28s} {'bf16 hidden':>12s} {'bf16 logits':>12s} {'tf32 hidden':>12s} {'tf32 logits':>12s}")
    for name in CASES:
        meta = json.loads((fixtures / "cases" / f"{name}.json").read_text())
        t = load_file(str(fixtures / "cases" / f"{name}.safetensors"))
        model_dir = Path(args.model_dir) if meta["model"] == "all-MiniLM-L6-v2" else fixtures / meta["model"]
        batch = {k: t[k] for k in ["input_ids", "attention_mask", "token_type_ids", "labels"]}
        errors = []
        for precision in ["bf16", "tf32"]:
            model = reference.load_model(model_dir)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            model = model.to(dtype)
            classifier = torch.nn.Linear(model.config.hidden_size, meta["num_labels"])
            with torch.no_grad():
                classifier.weight.copy_(t["classifier.weight"])
                classifier.bias.copy_(t["classifier.bias"])
            products = tf32_products() if precision == "tf32" else contextlib.nullcontext()
            with torch.no_grad(), products:
                out = reference.reference_forward(model, FixedPrefix(t["prefix.past"].to(dtype)),
                                                  lambda pooled: classifier(pooled.float()), batch,
                                                  meta["prefix_layers"])
            last = f"hidden_states.{model.config.num_hidden_layers}"
            errors += [rel_err(out["hidden"][-1], t[last]), rel_err(out["logits"], t["logits"])]
        print(f"{name:28s} " + " ".join(f"{e:12.2e}" for e in errors))


if __name__ == "__main__":
    main()
