#!/usr/bin/env bash
# The GPU check, in two halves.
#
#   scripts/gpu-check.sh --prepare   Here (no GPU): builds the CUDA binary (scripts/build-cuda.sh --build) and
#       packs what travels to the lent machine into target/gpu (< 64 MiB): the binary (xz), all-MiniLM-L6-v2
#       with float16 weights (its f32 compute still reaches cosine 0.9999990 to the reference), the shared
#       reference, a small random-weight MPNet and the tiny XLM-RoBERTa, ModernBERT and Gemma3 fixtures (each on CUDA
#       against the CPU) and a real-text timing
#       input. Then, with the device tool:
#       run(command="scripts/gpu-check.sh", carry=["target/gpu"], timeout_s=...)
#
#   scripts/gpu-check.sh             On the GPU machine, in one call: driver and GPU, CUDA libraries found,
#       parity of CUDA float32/float16/bfloat16 against the CPU result and the reference (float32 cosine
#       >= 0.99999, float16/bfloat16 >= 0.999), encoder tokens/s per dtype at batch sizes 32..512 (after a
#       warm-up pass), and Python sentence-transformers on the same inputs, weights, dtypes and batch sizes.
#       Everything printed is also written to $OUT/gpu-check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=target/gpu

if [ "${1:-}" = --prepare ]; then
  set -e
  source scripts/env.sh
  scripts/fetch-model.sh
  scripts/build-cuda.sh --build
  rm -rf "$pack" && mkdir -p "$pack/model"
  xz -T0 -6 -c target/cuda/release/chatspace-mpi > "$pack/chatspace-mpi.xz"
  cp -r models/all-MiniLM-L6-v2/. "$pack/model/"
  rm -f "$pack/model/model.safetensors"
  python3 - models/all-MiniLM-L6-v2/model.safetensors "$pack/model/model.safetensors" <<'PY'
# float32 -> float16 safetensors with the standard library only (struct's 'e' is IEEE half).
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n]); data = raw[8 + n:]
out_header, chunks, at = {}, [], 0
for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]; buf = data[a:b]
    if t["dtype"] == "F32":
        count = len(buf) // 4
        buf = struct.pack(f"<{count}e", *struct.unpack(f"<{count}f", buf)); dtype = "F16"
    else:
        dtype = t["dtype"]
    out_header[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [at, at + len(buf)]}
    chunks.append(buf); at += len(buf)
if "__metadata__" in header: out_header["__metadata__"] = header["__metadata__"]
h = json.dumps(out_header).encode(); h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for c in chunks: f.write(c)
PY
  cp ../shared/fixtures/minilm-l6-v2-reference.jsonl "$pack/reference.jsonl"
  # A small MPNet with seeded random float16 weights (hidden 128, 2 layers) and the real all-mpnet-base-v2
  # tokenizer and modules: the real weights do not fit the pack; the CUDA MPNet is checked against the CPU one.
  mkdir -p "$pack/mpnet/1_Pooling"
  cp models/all-mpnet-base-v2/{tokenizer.json,modules.json,sentence_bert_config.json} "$pack/mpnet/"
  python3 - "$pack/mpnet" <<'PY'
import json, random, struct, sys
d = sys.argv[1]
h, layers, heads, inter, vocab, pos, buckets = 128, 2, 4, 512, 30527, 514, 32
config = {"model_type": "mpnet", "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
          "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": pos, "layer_norm_eps": 1e-5,
          "relative_attention_num_buckets": buckets, "pad_token_id": 1, "hidden_act": "gelu"}
json.dump(config, open(f"{d}/config.json", "w"))
json.dump({"word_embedding_dimension": h, "pooling_mode_mean_tokens": True}, open(f"{d}/1_Pooling/config.json", "w"))
rng = random.Random(20261206)
shapes = {"embeddings.word_embeddings.weight": [vocab, h], "embeddings.position_embeddings.weight": [pos, h],
          "embeddings.LayerNorm.weight": [h], "embeddings.LayerNorm.bias": [h],
          "encoder.relative_attention_bias.weight": [buckets, heads]}
for i in range(layers):
    p = f"encoder.layer.{i}."
    for n in "qkvo":
        shapes[p + f"attention.attn.{n}.weight"] = [h, h]; shapes[p + f"attention.attn.{n}.bias"] = [h]
    shapes.update({p + "attention.LayerNorm.weight": [h], p + "attention.LayerNorm.bias": [h],
                   p + "intermediate.dense.weight": [inter, h], p + "intermediate.dense.bias": [inter],
                   p + "output.dense.weight": [h, inter], p + "output.dense.bias": [h],
                   p + "output.LayerNorm.weight": [h], p + "output.LayerNorm.bias": [h]})
header, chunks, at = {}, [], 0
for name, shape in shapes.items():
    count = 1
    for s in shape: count *= s
    if name.endswith("LayerNorm.weight"): vals = [1.0 + rng.gauss(0, 0.02) for _ in range(count)]
    elif name.endswith("relative_attention_bias.weight"): vals = [rng.gauss(0, 0.5) for _ in range(count)]
    else: vals = [rng.gauss(0, 0.05) for _ in range(count)]
    buf = struct.pack(f"<{count}e", *vals)
    header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [at, at + len(buf)]}
    chunks.append(buf); at += len(buf)
hb = json.dumps(header).encode(); hb += b" " * (-len(hb) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(hb))); f.write(hb)
    for c in chunks: f.write(c)
PY
  # The tiny XLM-RoBERTa (Unigram tokenizer), ModernBERT (sliding-window layers) and Gemma3 (embeddinggemma
  # layout, two Dense modules) fixtures, as they are.
  cp -r tests/fixtures/tiny-xlm-roberta tests/fixtures/tiny-modernbert tests/fixtures/tiny-gemma-embedding "$pack/"
  python3 - "$pack/texts.jsonl" <<'PY'
# Timing input: real text of data/sample.jsonl, consecutive texts joined 1..4 at a time (~115 tokens a row), x8.
import json, sys
texts = [t for t in (json.loads(l).get("text") for l in open("data/sample.jsonl")) if t and t.strip()]
rows, i, k = [], 0, 0
while i < len(texts):
    n = k % 4 + 1; rows.append(" ".join(texts[i:i + n])); i += n; k += 1
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        for t in rows: f.write(json.dumps({"text": t}) + "\n")
PY
  du -sh "$pack"
  exit 0
fi

# ---- on the GPU machine ----
OUT=${OUT:-$pack/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.txt") 2>&1
echo "== gpu-check $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not available"
py=""
for p in python3 python /usr/bin/python3 /opt/conda/bin/python; do
  if command -v "$p" >/dev/null && "$p" -c 'import torch, sentence_transformers' 2>/dev/null; then py=$p; break; fi
done
echo "python with torch + sentence-transformers: ${py:-none}"
# CUDA 13 libraries: the Python install's nvidia wheels and torch/lib, plus whatever the system has.
if [ -n "$py" ]; then
  libs=$("$py" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "nvidia", "cu*", "lib")) + glob.glob(os.path.join(sp, "torch", "lib"))
print(":".join(sorted(set(dirs))))
PY
)
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
bin=/tmp/chatspace-mpi-cuda
xz -dc "$pack/chatspace-mpi.xz" > "$bin" && chmod +x "$bin"
echo "== libraries"
ldd "$bin" | grep -E "cuda|cublas|curand|nvrtc|not found"
if ldd "$bin" | grep -q "not found"; then echo "FAIL: missing libraries"; exit 1; fi
model=$pack/model

echo "== parity: 64 reference texts (float16 weights, computed in each dtype)"
"$bin" encode --model "$model" --input "$pack/reference.jsonl" --device cpu --batch-sizes 16 --out "$OUT/cpu.jsonl" > /dev/null || echo "FAIL: cpu encode"
for dt in float32 float16 bfloat16; do
  "$bin" encode --model "$model" --input "$pack/reference.jsonl" --device cuda --dtype "$dt" --batch-sizes 16 --out "$OUT/cuda-$dt.jsonl" > /dev/null || echo "FAIL: cuda $dt encode"
done
python3 - "$OUT" "$pack/reference.jsonl" <<'PY'
import json, math, os, sys
out, ref_path = sys.argv[1], sys.argv[2]
ref = [json.loads(l)["embedding"] for l in open(ref_path)]
load = lambda p: [json.loads(l)["embedding"] for l in open(p)] if os.path.exists(p) else None
def worst(a, b):
    return min(sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v)) for u, v in zip(a, b))
cpu = load(os.path.join(out, "cpu.jsonl"))
print(f"{'run':<16} {'vs reference':>14} {'vs cpu':>10} {'goal':>8}  verdict")
if cpu: print(f"{'cpu float32':<16} {worst(cpu, ref):>14.7f} {'-':>10} {0.99999:>8}")
for dt, goal in [("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.999)]:
    got = load(os.path.join(out, f"cuda-{dt}.jsonl"))
    if got is None or len(got) != len(ref):
        print(f"cuda {dt:<11} {'missing':>14}"); continue
    r, c = worst(got, ref), (worst(got, cpu) if cpu else float("nan"))
    print(f"cuda {dt:<11} {r:>14.7f} {c:>10.7f} {goal:>8}  {'ok' if r >= goal else 'FAIL'}")
PY

echo "== Other architectures on CUDA against this crate's CPU forward pass: MPNet (small, seeded random weights,"
echo "   real tokenizer), the tiny XLM-RoBERTa, ModernBERT and Gemma3 fixtures of tests/fixtures"
for m in mpnet tiny-xlm-roberta tiny-modernbert tiny-gemma-embedding; do
  "$bin" encode --model "$pack/$m" --input "$pack/reference.jsonl" --device cpu --batch-sizes 16 --out "$OUT/$m-cpu.jsonl" > /dev/null || echo "FAIL: $m cpu encode"
  for dt in float32 float16 bfloat16; do
    "$bin" encode --model "$pack/$m" --input "$pack/reference.jsonl" --device cuda --dtype "$dt" --batch-sizes 16 --out "$OUT/$m-cuda-$dt.jsonl" > /dev/null || echo "FAIL: $m cuda $dt encode"
  done
done
python3 - "$OUT" <<'PY'
import json, math, os, sys
out = sys.argv[1]
load = lambda p: [json.loads(l)["embedding"] for l in open(p)] if os.path.exists(p) else None
def worst(a, b):
    return min(sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v)) for u, v in zip(a, b))
for m in ["mpnet", "tiny-xlm-roberta", "tiny-modernbert", "tiny-gemma-embedding"]:
    cpu = load(os.path.join(out, f"{m}-cpu.jsonl"))
    for dt, goal in [("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.99)]:
        got = load(os.path.join(out, f"{m}-cuda-{dt}.jsonl"))
        if got is None or cpu is None or len(got) != len(cpu):
            print(f"{m:<20} cuda {dt:<9} missing"); continue
        c = worst(got, cpu)
        print(f"{m:<20} cuda {dt:<9} vs cpu {c:.7f} (goal {goal})  {'ok' if c >= goal else 'FAIL'}")
PY

echo "== encoder tokens/s (chatspace-mpi encode: sorted by length, warm-up pass first)"
for dt in float32 float16 bfloat16; do
  "$bin" encode --model "$model" --input "$pack/texts.jsonl" --device cuda --dtype "$dt" --batch-sizes 32,64,128,256,512 | sed "s/^/[$dt] /"
done

if [ -n "$py" ]; then
  echo "== Python sentence-transformers, same inputs and weights"
  "$py" - "$model" "$pack/texts.jsonl" <<'PY'
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, path = sys.argv[1], sys.argv[2]
texts = [json.loads(l)["text"] for l in open(path)]
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
for name, dt in [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)]:
    m = SentenceTransformer(model_dir, device="cuda", model_kwargs={"torch_dtype": dt})
    tok = m.tokenizer
    tokens = sum(min(len(ids), m.max_seq_length) for ids in tok(texts, add_special_tokens=True)["input_ids"])
    for bs in [32, 64, 128, 256, 512]:
        m.encode(texts, batch_size=bs)  # warm-up
        torch.cuda.synchronize(); t0 = time.perf_counter()
        m.encode(texts, batch_size=bs)
        torch.cuda.synchronize(); s = time.perf_counter() - t0
        print(f"[{name}] {bs:>6} {len(texts):>6} {tokens:>8} {s:>8.3f} {tokens / s:>10.0f} {len(texts) / s:>9.1f}")
PY
fi
echo "== done; results in $OUT"
