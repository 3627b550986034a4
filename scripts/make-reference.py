#!/usr/bin/env python3
"""Reference embeddings of the 64 parity texts (tests/fixtures/minilm-l6-v2-reference.jsonl: short and long,
past the max length, CJK, RTL, emoji) by Python sentence-transformers, for a model folder: one JSON line per
text with its input ids (special tokens included, as sentence-transformers truncates them) and its embedding.

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-reference.py models/all-mpnet-base-v2 tests/fixtures/mpnet-reference.jsonl
"""
import json
import os
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

model_dir, out_path = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
texts = [json.loads(line)["text"] for line in open(os.path.join(root, "tests/fixtures/minilm-l6-v2-reference.jsonl"))]
torch.set_num_threads(2)
print(f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}", file=sys.stderr)
model = SentenceTransformer(model_dir, device="cpu")
print(f"max_seq_length {model.max_seq_length}", file=sys.stderr)
vectors = model.encode(texts, batch_size=8, convert_to_numpy=True)
with open(out_path, "w") as out:
    for text, v in zip(texts, vectors):
        ids = model.tokenize([text])["input_ids"][0].tolist()
        out.write(json.dumps({"text": text, "input_ids": ids, "embedding": [float(f"{x:.8g}") for x in v]}) + "\n")
print(f"{len(texts)} texts, dim {vectors.shape[1]} -> {out_path}", file=sys.stderr)
