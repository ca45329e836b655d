#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test in
# release mode (the golden tests run the real MiniLM forward and backward),
# then the CUDA kernels compiled by NVRTC 13.0 (fetched once from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh
nvrtc="$(bash scripts/fetch-nvrtc.sh)"
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
# The CUDA kernels through NVRTC 13.0, for every architecture: there is no
# GPU here, and the emulator's g++ accepts C++ that NVRTC refuses.
PTUNING_REQUIRE_NVRTC=1 LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --release --quiet --test cuda -- kernels_compile_with_nvrtc
