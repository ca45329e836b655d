"""How far PyTorch's own bf16 is from the fp32 fixtures.

The CUDA engine's bf16 is tested against the fp32 fixtures of
tests/fixtures/cases by the relative error ||got - want|| / ||want|| of the
last hidden state and of the logits (tests/cuda.rs, `tolerances`). This
prints the same measure for PyTorch running the same cases as a bf16 user
runs them: the backbone converted with `.to(torch.bfloat16)` (weights,
activations and residual stream in bf16), the prefix table (the fixture's
`prefix.past`) in bf16, and the classifier in f32 on the pooled output, as
the engine keeps its head. The forward is reference.py's.

    venv/bin/python tools/torch_bf16_error.py [--model-dir DIR]

`--model-dir`: all-MiniLM-L6-v2, as for reference.py.
"""

import argparse
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
    print(f"{'case':28s} {'last hidden':>12s} {'logits':>12s}")
    for name in CASES:
        meta = json.loads((fixtures / "cases" / f"{name}.json").read_text())
        t = load_file(str(fixtures / "cases" / f"{name}.safetensors"))
        model_dir = Path(args.model_dir) if meta["model"] == "all-MiniLM-L6-v2" else fixtures / meta["model"]
        model = reference.load_model(model_dir).to(torch.bfloat16)
        classifier = torch.nn.Linear(model.config.hidden_size, meta["num_labels"])
        with torch.no_grad():
            classifier.weight.copy_(t["classifier.weight"])
            classifier.bias.copy_(t["classifier.bias"])
        batch = {k: t[k] for k in ["input_ids", "attention_mask", "token_type_ids", "labels"]}
        with torch.no_grad():
            out = reference.reference_forward(model, FixedPrefix(t["prefix.past"].to(torch.bfloat16)),
                                              lambda pooled: classifier(pooled.float()), batch,
                                              meta["prefix_layers"])
        last = f"hidden_states.{model.config.num_hidden_layers}"
        print(f"{name:28s} {rel_err(out['hidden'][-1], t[last]):12.2e} {rel_err(out['logits'], t['logits']):12.2e}")


if __name__ == "__main__":
    main()
