#!/usr/bin/env bash
# Tokenizer benchmark (numbers, not tests), release build:
#   1. tokens per CPU second on one thread: the `tokenizers` crate (reference) and this crate's tokenizer (auto:
#      the fast path where it applies), for each model's tokenizer and each corpus, and the ratio; then the fast
#      path on every core.
#   2. the pipeline feeding placeholder encoders (`embed --encoder noop-tokenized`, loaders tokenize for the real
#      model) under mpirun with 1 and 2 loaders: tokens/s, against the one-thread rate x loaders.
# Corpora: English prose (data/sample.jsonl, repeated: caches hit often), Python's standard library source
# split into paragraphs (code, comments and docstrings, little repetition), data/sample.jsonl joined 20 texts
# at a time (most rows cut at the model's length), and generated multilingual text (twelve scripts, emoji).
# Tokenizers: all-MiniLM-L6-v2 (WordPiece), Qwen's byte-level BPE with its 151,643-token vocabulary
# (models/qwen-tokenizer, made by scripts/fetch-model.sh) and the tiny Qwen3 fixture's GPT-2-style BPE.
# Usage: scripts/bench-tokens.sh [--quick]   (extra tokenizers: BENCH_TOKENIZER_MODELS="dir1 dir2")
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-model.sh >/dev/null
# `tokens` takes a model folder: the tiny Qwen3 fixture with Qwen's tokenizer (no weights are read).
cargo build --release --locked -q
bin=$PWD/target/release/chatspace-mpi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r tests/fixtures/tiny-qwen3-embedding "$work/qwen" && cp models/qwen-tokenizer/tokenizer.json "$work/qwen/"
copies=200; [ "${1:-}" = --quick ] && copies=20
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
python3 - "$work" "$copies" <<'PY'
import json, random, sys
work, copies = sys.argv[1], int(sys.argv[2])
texts = [t for t in (json.loads(l).get("text") for l in open("data/sample.jsonl")) if t and t.strip()]
with open(f"{work}/english.jsonl", "w") as f:
    for _ in range(copies):
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
with open(f"{work}/long.jsonl", "w") as f:
    for _ in range(max(1, copies // 4)):
        for i in range(0, len(texts), 20):
            f.write(json.dumps({"text": " ".join(texts[i:i + 20])}) + "\n")
import sysconfig, pathlib
rows = 0
with open(f"{work}/stdlib.jsonl", "w") as f:
    for p in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if rows >= copies * 500:
            break
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for para in text.split("\n\n"):
            if len(para.strip()) >= 20 and rows < copies * 500:
                f.write(json.dumps({"text": para}) + "\n")
                rows += 1
r = random.Random(7)
ranges = [(0x41, 0x7a), (0xc0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x5d0, 0x5ea), (0x620, 0x64a), (0x900, 0x97f),
          (0xe01, 0xe3a), (0x3041, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x1f300, 0x1f64f)]
with open(f"{work}/multilingual.jsonl", "w") as f:
    for _ in range(copies * 50):
        words = []
        for _ in range(r.randint(5, 60)):
            lo, hi = r.choice(ranges)
            words.append("".join(chr(r.randint(lo, hi)) for _ in range(r.randint(1, 8))))
        f.write(json.dumps({"text": " ".join(words)}) + "\n")
PY
models=("models/all-MiniLM-L6-v2" "$work/qwen" "tests/fixtures/tiny-qwen3-embedding" ${BENCH_TOKENIZER_MODELS:-})
tok() { "$bin" tokens --json --model "$1" --dataset "$2" --tokenizer "$3" --threads "$4"; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "== 1. tokens per CPU second, one thread (tokenizers crate = reference), then all $(nproc) threads"
printf '%-22s %-13s %10s %6s %14s %14s %7s %16s\n' model corpus rows cut% reference "this crate" ratio "all threads"
for m in "${models[@]}"; do
  for c in english stdlib long multilingual; do
    ref=$(tok "$m" "$work/$c.jsonl" reference 1)
    fast=$(tok "$m" "$work/$c.jsonl" auto 1)
    all=$(tok "$m" "$work/$c.jsonl" auto 0)
    python3 - "$m" "$c" "$ref" "$fast" "$all" <<'PY'
import json, os, sys
m, c = sys.argv[1], sys.argv[2]
m = "qwen-tokenizer" if m.endswith("/qwen") else os.path.basename(m)
ref, fast, full = (json.loads(a) for a in sys.argv[3:6])
assert ref["tokens"] == fast["tokens"] == full["tokens"], "token counts differ"
cut = 100 * fast["rows_truncated"] / max(1, fast["rows"])
print(f"{m[:22]:<22} {c:<13} {fast['rows']:>10} {cut:>5.0f}% {ref['tokens_per_cpu_second']:>14,.0f} {fast['tokens_per_cpu_second']:>14,.0f}"
      f" {fast['tokens_per_cpu_second'] / ref['tokens_per_cpu_second']:>6.1f}x {full['tokens_per_second']:>16,.0f}  ({fast['tokenizer']})")
PY
  done
done
echo "== 2. pipeline, placeholder encoders, loaders tokenize for all-MiniLM-L6-v2 (stdlib corpus, 1 loader thread each)"
one=$(tok models/all-MiniLM-L6-v2 "$work/stdlib.jsonl" auto 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_cpu_second"])')
for loaders in 1 2; do
  n=$((loaders + 3))
  out="$work/out-$loaders"
  RUST_LOG=info mpirun -n "$n" --oversubscribe --bind-to none "$bin" embed --dataset "$work/stdlib.jsonl" --model models/all-MiniLM-L6-v2 \
    --output-root "$out" --no-progress --encoder noop-tokenized --loaders "$loaders" --loader-threads 1 --batch-size 256 2> "$work/p$loaders.log"
  python3 - "$work/p$loaders.log" "$loaders" "$one" <<'PY'
import re, sys
log = open(sys.argv[1]).read(); loaders, one = int(sys.argv[2]), float(sys.argv[3])
done = re.search(r"this run (\d+) rows in ([\d.]+)s \(([\d.]+) rows/s, (\d+) tokens/s", log)
rows, secs, tps = int(done.group(1)), float(done.group(2)), int(done.group(4))
cpu = {w: float(s) for w, s in re.findall(r"\] (\w+ \d+(?: shard thread \d+| tokenizer threads)?): ([\d.]+)s CPU", log)}
loader_cpu = sum(s for w, s in cpu.items() if w.startswith("loader"))
tokens = tps * secs
print(f"{loaders} loader(s): {tps:>12,} tokens/s = {100 * tps / (one * loaders):.0f}% of the one-thread tokenizer rate x {loaders};"
      f" loaders {tokens / max(loader_cpu, 1e-9):,.0f} tokens per CPU second (reading, tokenizing, batching, sending)")
print("             CPU s: " + ", ".join(f"{w} {s:.2f}" for w, s in sorted(cpu.items())))
PY
done
