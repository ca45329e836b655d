#!/usr/bin/env bash
# Every GPU check in one run, on a machine with an NVIDIA GPU, CUDA 13 and
# PyTorch (no Rust needed): bench/gpu-prepare.sh built .gpu/ beforehand.
#   1. the golden fixtures and the CPU-equivalence tests on the GPU
#      (tests/cuda.rs: fp32, tf32, bf16; dropout and every head);
#   2. ptuning against PyTorch eager (bench/torch_peer.py) on the same random
#      bert-base and bert-large weights, batch 32 x seq 128, prefix 20,
#      training step and inference, in fp32 (3xTF32 GEMMs and attention, and
#      SGEMM with the f32 attention kernels), tf32 and bf16 (and bf16 with
#      PTUNING_BF16_ATTENTION=operands: inference's attention as before
#      attention_forward_qkv_bf16);
#   3. the table, printed and written to ${OUT:-.}/gpu-results.md, with each
#      inference's matrix TFLOP/s against the card's GEMM peak in that
#      precision as torch measures it (bench/gemm_peak.py), and the peak
#      device memory in buffers (ptuning) and tensors (PyTorch);
#   4. where our time goes, kernel by kernel (bench --profile), into gpu-profile.md,
#      with the MLP prefix too;
#   5. serving on the GPU: bench/serve_load.sh with a CB adapter on bert-base
#      in bf16 (10 s per scenario, 64 connections), into gpu-serve.txt.
# Usage: bash bench/gpu.sh [--quick | --profile]
#   --quick: bert-base only, fewer iterations; --profile: tests and step 4 only.
# SIZES (default "base large") and PRECISIONS (default "fp32 tf32 bf16")
# narrow the speed section: SIZES=large PRECISIONS=bf16 for one row.
# PROMPT_TUNING=1 adds prompt tuning's rows in bf16 (bench --method
# prompt-tuning against the same model in plain torch: torch_peer.py
# --prompt-impl plain, which needs no PEFT on the GPU machine).
# SECTIONS (default "tests speed profile serve") runs a subset, for a short
# lease: SECTIONS="tests speed" bash bench/gpu.sh. SECTIONS="ncu" (not in the
# default) runs Nsight Compute on one launch of each attention, LayerNorm
# and GELU kernel of a bert-large bf16 step: occupancy, warp stall reasons
# and instruction counts, into gpu-ncu.txt (where ncu reads the counters:
# not under gVisor).
# The most wanted results come first: a run cut short keeps what it wrote in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
mode="${1:-}"
python="${PTUNING_TORCH_PYTHON:-python3}"
sections=" ${SECTIONS:-tests speed profile serve} "
want() { [[ "$sections" == *" $1 "* ]]; }
. bench/cuda-libs.sh  # CUDA 13's libraries
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

tests_rc=0
if want tests; then
echo "== 1. GPU tests"
# The emulated runs of these tests are CI's, and the NVRTC check of every
# architecture runs wherever NVRTC loads (about 30 s of compiles); here they
# would only spend device time.
PTUNING_TEST_EMULATION=0 PTUNING_TEST_ROOT="$PWD" PTUNING_TEST_BIN="$PWD/.gpu/ptuning" timeout 300 .gpu/cuda-tests \
    --skip kernels_compile_with_nvrtc --nocapture --test-threads 1 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
fi

want speed && echo "== 2. speed against PyTorch"
sizes="${SIZES:-base large}"; iters=20
[ "$mode" = "--quick" ] && { sizes="base"; iters=5; }
results="$out/gpu-runs.jsonl"; : > "$results"
for size in $sizes; do
    dir="/tmp/bert-$size"
    [ -f "$dir/model.safetensors" ] || "$python" bench/random_bert.py --size "$size" --out "$dir" > /dev/null 2>&1
    { [ "$mode" = "--profile" ] || ! want speed; } && continue
    for precision in ${PRECISIONS:-fp32 tf32 bf16}; do
        args=(--model "$dir" --batch 32 --seq 128 --prefix-len 20 --warmup 3 --iters "$iters" --json)
        ours=$(timeout 120 .gpu/ptuning bench --device cuda --precision "$precision" "${args[@]}" 2>> "$out/gpu-errors.log")
        peer=$(timeout 120 "$python" bench/torch_peer.py --device cuda --precision "$precision" "${args[@]}" 2>> "$out/gpu-errors.log")
        echo "{\"size\": \"$size\", \"precision\": \"$precision\", \"ours\": ${ours:-null}, \"peer\": ${peer:-null}}" >> "$results"
        if [ "$precision" = fp32 ]; then
            # fp32 runs by 3xTF32 on the tensor cores (GEMMs and attention); SGEMM
            # and the f32 attention kernels too, against the same peer run.
            ours=$(PTUNING_FP32_GEMM=sgemm timeout 120 .gpu/ptuning bench --device cuda --precision fp32 "${args[@]}" 2>> "$out/gpu-errors.log")
            echo "{\"size\": \"$size\", \"precision\": \"fp32\", \"ours\": ${ours:-null}, \"peer\": ${peer:-null}}" >> "$results"
        fi
        if [ "$precision" = bf16 ]; then
            # Inference's attention through attention_operands' copy, as before
            # attention_forward_qkv_bf16, against the same peer run.
            ours=$(PTUNING_BF16_ATTENTION=operands timeout 120 .gpu/ptuning bench --device cuda --precision bf16 "${args[@]}" 2>> "$out/gpu-errors.log")
            echo "{\"size\": \"$size\", \"precision\": \"bf16 (attention_operands)\", \"ours\": ${ours:-null}, \"peer\": ${peer:-null}}" >> "$results"
        fi
    done
    if [ "${PROMPT_TUNING:-0}" = 1 ]; then
        args=(--model "$dir" --batch 32 --seq 128 --prefix-len 20 --warmup 3 --iters "$iters" --json --method prompt-tuning)
        ours=$(timeout 120 .gpu/ptuning bench --device cuda --precision bf16 "${args[@]}" 2>> "$out/gpu-errors.log")
        peer=$(timeout 120 "$python" bench/torch_peer.py --device cuda --precision bf16 --prompt-impl plain "${args[@]}" 2>> "$out/gpu-errors.log")
        echo "{\"size\": \"$size\", \"precision\": \"bf16\", \"method\": \"prompt-tuning\", \"ours\": ${ours:-null}, \"peer\": ${peer:-null}}" >> "$results"
    fi
done

[ "$mode" != "--profile" ] && want speed && timeout 120 "$python" bench/gemm_peak.py > "$out/gpu-peak.json" 2>> "$out/gpu-errors.log"

if [ "$mode" != "--profile" ] && want speed; then
echo "== 3. table"
"$python" - "$results" "$out/gpu.txt" "$out/gpu-peak.json" > "$out/gpu-results.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
card = open(sys.argv[2]).read().strip()
try:
    peak = json.loads(open(sys.argv[3]).read())
except (OSError, ValueError):
    peak = {}
print(f"GPU: {card}; batch 32 x seq 128, prefix 20 on every layer; medians in ms")
if peak:
    print(f"GEMM peak (torch.matmul, {peak['n']}^3): fp32 {peak['fp32']}, tf32 {peak['tf32']}, bf16 {peak['bf16']} TFLOP/s")
print()
print("| model | precision | train ptuning | train PyTorch | ratio | infer ptuning | infer PyTorch | ratio "
      "| infer % of peak, ptuning / PyTorch | device MiB (peak), ptuning / PyTorch | ptuning GEMMs | ptuning attention |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    o, p = r["ours"] or {}, r["peer"] or {}
    def cell(d, k):
        return f"{d[k]:.1f}" if k in d else "failed"
    def ratio(k):
        return f"{o[k] / p[k]:.2f}x" if k in o and k in p else "-"
    # The same matrix FLOPs on both sides: ptuning's count over each one's time.
    share = "-"
    # (A row's precision may name a variant after it: "bf16 (attention_operands)".)
    base = r["precision"].split()[0]
    if "infer_tflops" in o and base in peak:
        flop_ms = o["infer_tflops"] * o["infer_ms"]
        ours = 100 * o["infer_tflops"] / peak[base]
        theirs = f"{100 * flop_ms / p['infer_ms'] / peak[base]:.0f}" if "infer_ms" in p else "-"
        share = f"{ours:.0f} / {theirs}"
    def mib(d):
        return f"{d['device_peak_mib']:.0f}" if d.get("device_peak_mib") is not None else "-"
    memory = f"{mib(o)} / {mib(p)}"
    model = f"bert-{r['size']}" + (" (prompt tuning)" if r.get("method") == "prompt-tuning" else "")
    print(f"| {model} | {r['precision']} | {cell(o, 'train_step_ms')} | {cell(p, 'train_step_ms')} | "
          f"{ratio('train_step_ms')} | {cell(o, 'infer_ms')} | {cell(p, 'infer_ms')} | {ratio('infer_ms')} | "
          f"{share} | {memory} | {o.get('gemm', '-')} | {o.get('attention', '-')} |")
PY
cat "$out/gpu-results.md"
fi

if want profile; then
echo "== 4. where our time goes (bench --profile: device events around every launch)"
: > "$out/gpu-profile.md"
largest="${sizes##* }"
for size in $sizes; do
    precisions="bf16 tf32"
    [ "$size" = "$largest" ] && precisions="bf16 tf32 fp32"  # fp32: 3xTF32's GEMMs, splits and attention
    for precision in $precisions; do
        echo "### bert-$size $precision" >> "$out/gpu-profile.md"
        timeout 120 .gpu/ptuning bench --device cuda --precision "$precision" --model "/tmp/bert-$size" \
            --batch 32 --seq 128 --prefix-len 20 --warmup 2 --iters 3 --profile > /dev/null 2>> "$out/gpu-profile.md"
    done
done
# The MLP reparameterization, trained on the device too (bench --prefix-projection).
echo "### bert-$largest bf16, --prefix-projection" >> "$out/gpu-profile.md"
timeout 120 .gpu/ptuning bench --device cuda --precision bf16 --model "/tmp/bert-$largest" --batch 32 --seq 128 \
    --prefix-len 20 --prefix-projection --warmup 2 --iters 3 --profile > /dev/null 2>> "$out/gpu-profile.md"
cat "$out/gpu-profile.md"
fi

[ "$mode" = "--profile" ] && exit "$tests_rc"

if want ncu; then
echo "== 6. Nsight Compute"
: > "$out/gpu-ncu.txt"
[ -f /tmp/bert-large/model.safetensors ] || "$python" bench/random_bert.py --size large --out /tmp/bert-large > /dev/null 2>&1
for kernel in attention_forward_bf16 attention_forward_qkv_bf16 attention_backward_dq_bf16 \
    attention_backward_dkv_bf16 bias_dropout_residual_layernorm residual16_layernorm bias_gelu_bf16; do
    echo "### $kernel" >> "$out/gpu-ncu.txt"
    # The third launch: past the first layers' cold caches.
    timeout 120 ncu --clock-control none --kernel-name "$kernel" --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section InstructionStats --print-summary none \
        .gpu/ptuning --device cuda --precision bf16 bench --model /tmp/bert-large --batch 32 --seq 128 \
        --prefix-len 20 --warmup 0 --iters 1 >> "$out/gpu-ncu.txt" 2>&1 || echo "(ncu failed)" >> "$out/gpu-ncu.txt"
done
grep -E "^###|Duration|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Executed Ipc|No Instruction|failed" "$out/gpu-ncu.txt"
fi

want serve || exit "$tests_rc"
echo "== 5. serving on the GPU"
if [ -f .gpu/serve/tokenizer.json ]; then
    cp .gpu/serve/tokenizer.json /tmp/bert-base/
    PTUNING_BIN="$PWD/.gpu/ptuning" PTUNING_FLAGS="--device cuda --precision bf16" PTUNING_MODEL=/tmp/bert-base \
        PTUNING_DATA="$PWD/.gpu/serve/data" DURATION=10 CONNS=64 WORK=/tmp/ptuning-serve \
        timeout 300 bash bench/serve_load.sh 2>&1 | tee "$out/gpu-serve.txt"
else
    echo "skipped: bench/gpu-prepare.sh found no CB data" | tee "$out/gpu-serve.txt"
fi
exit "$tests_rc"
