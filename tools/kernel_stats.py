#!/usr/bin/env python3
"""What ptxas makes of each CUDA kernel, without a GPU: registers, spilled
bytes and, with nvdisasm, SASS instructions in all and per loop.

kernels.cu is compiled to a cubin by NVRTC (the library scripts/fetch-nvrtc.sh
fetches) for one head size and architecture, as the engine compiles it. A
loop is the instructions from a label to the branch back to it: the count
per iteration of a grid-stride or row loop, the figure that bounds a
compute-bound element-wise kernel. The numbers quoted in the commits and
docs/results.md come from here; what they are worth against a card's
timings is what the card says.

    python3 tools/kernel_stats.py --nvrtc "$(bash scripts/fetch-nvrtc.sh)" \\
        [--nvdisasm PATH] [--head-dim 64] [--arch sm_90] [--without-dropout] [KERNEL ...]

--without-dropout builds the forward attention with its dropout flag fixed
at 0 (KERNEL_STATS_WITHOUT_DROPOUT): the loop inference executes, where the
plain build counts dropout's branches too.

nvdisasm: PyPI's nvidia-cuda-nvdisasm wheel has it (nvidia/cu13/bin); without
it only registers and spills are printed. Python's standard library only.
"""

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "engine", "cuda", "kernels")


def compile_cubin(nvrtc_dir, head_dim, arch, defines=()):
    """(cubin bytes, ptxas log) of kernels.cu for head_dim and arch, with
    -D`defines`."""
    # libnvrtc loads its builtins library from the same folder by name.
    ctypes.CDLL(os.path.join(nvrtc_dir, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(os.path.join(nvrtc_dir, "libnvrtc.so.13"))
    source = open(os.path.join(KERNELS, "kernels.cu"), "rb").read()
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, b"kernels.cu", 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    options = [f"-DHEAD_DIM={head_dim}", f"--gpu-architecture={arch}", f"-I{KERNELS}", "--ptxas-options=-v"]
    options += [f"-D{d}" for d in defines]
    argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(prog, len(options), argv)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    log = log.value.decode()
    if status != 0:
        sys.exit(f"NVRTC could not compile kernels.cu:\n{log}")
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    return cubin.raw, log


def registers(log):
    """{kernel: (registers, spill store bytes)} from ptxas -v."""
    out, kernel = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and kernel:
            out[kernel] = (None, int(m.group(1)))
        m = re.search(r"Used (\d+) registers", line)
        if m and kernel:
            out[kernel] = (int(m.group(1)), out.get(kernel, (None, 0))[1])
    return out


def sass(cubin, nvdisasm):
    """{kernel: [instruction or label, ...]} from nvdisasm."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    out, kernel = {}, None
    for line in text.splitlines():
        m = re.match(r"\.text\.(\w+):", line)
        if m:
            kernel = m.group(1)
            out[kernel] = []
        elif re.match(r"\s*\.section", line):
            kernel = None
        elif kernel is None:
            continue
        elif re.match(r"\.L_x_\d+:", line):
            out[kernel].append(line.rstrip(":"))
        elif re.match(r"\s+/\*[0-9a-f]+\*/\s+\S", line):
            out[kernel].append(re.sub(r"^\s+/\*[0-9a-f]+\*/\s+", "", line).split(" ;")[0])
    return out


def loops(lines):
    """Instructions per iteration of each loop: from a label to the branch
    back to it (a branch to itself, the end-of-kernel trap, is left out)."""
    at, count, out = {}, 0, []
    for entry in lines:
        if entry.startswith(".L_x_"):
            at[entry] = count
            continue
        m = re.search(r"BRA `\((\.L_x_\d+)\)", entry)
        if m and m.group(1) in at and count > at[m.group(1)]:
            out.append(count - at[m.group(1)] + 1)
        count += 1
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nvrtc", required=True, help="folder of libnvrtc.so.13 (scripts/fetch-nvrtc.sh)")
    parser.add_argument("--nvdisasm", default=shutil.which("nvdisasm"), help="nvdisasm for SASS counts")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--without-dropout", action="store_true", help="the forward attention without dropout")
    parser.add_argument("kernels", nargs="*", help="only these kernels")
    args = parser.parse_args()
    defines = ["KERNEL_STATS_WITHOUT_DROPOUT"] if args.without_dropout else []
    cubin, log = compile_cubin(args.nvrtc, args.head_dim, args.arch, defines)
    regs = registers(log)
    code = sass(cubin, args.nvdisasm) if args.nvdisasm else {}
    print(f"kernels.cu, HEAD_DIM {args.head_dim}, {args.arch}")
    print(f"{'kernel':40} {'registers':>9} {'spilled':>8} {'SASS':>6}  instructions per loop iteration")
    for kernel in sorted(regs):
        if args.kernels and kernel not in args.kernels:
            continue
        r, spilled = regs[kernel]
        lines = code.get(kernel, [])
        count = sum(1 for e in lines if not e.startswith(".L_x_"))
        per_loop = " ".join(str(n) for n in loops(lines)) if lines else "-"
        print(f"{kernel:40} {r!s:>9} {spilled:>8} {count if lines else '-':>6}  {per_loop}")


if __name__ == "__main__":
    main()
