#!/usr/bin/env python3
"""Python baseline for `cargo bench --bench encoder`: sentence-transformers on the same model folder, input,
batch size and thread count, printing the same columns.

    scripts/bench --setup-python      # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    OMP_NUM_THREADS=2 target/stvenv/bin/python scripts/bench_st.py models/all-MiniLM-L6-v2 INPUT.jsonl 32
scripts/bench runs it side by side with the Rust encoders on the same input.
"""
import json
import os
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
path = sys.argv[2] if len(sys.argv) > 2 else "data/sample.jsonl"
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(threads)

texts = [t for t in (json.loads(line).get("text") for line in open(path)) if t and t.strip()]
model = SentenceTransformer(model_dir, device="cpu")
tok = model.tokenizer
max_len = model.max_seq_length
tokens = sum(min(len(ids), max_len) for ids in tok(texts, add_special_tokens=True)["input_ids"])
model.encode(texts[:batch], batch_size=batch)  # warm-up
start = time.perf_counter()
model.encode(texts, batch_size=batch)  # sorts by length internally, like the pipeline
secs = time.perf_counter() - start
print(f"sentence-transformers: {model_dir}, {len(texts)} rows of {path}, batch {batch}, threads {threads}, torch {torch.__version__}")
name = f"torch ({threads} threads)"
print(f"{name:<18} {'sorted':<9} {len(texts):>6} {tokens:>8} {secs:>8.2f} {tokens / secs:>10.0f} {len(texts) / secs:>9.1f}       -")
