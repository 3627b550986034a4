#!/usr/bin/env python3
"""Reference outputs of sentence-transformers' Pooling module in each of its modes, for tests/parity.rs.

For every mode (cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken), a copy of the real
all-MiniLM-L6-v2 folder with that mode in 1_Pooling/config.json and without the Normalize module (so the
pooled values themselves are compared) encodes every 4th text of the parity set (16 texts, some past the
max length). Writes tests/fixtures/minilm-pooling-reference.jsonl: one line per mode and text.

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-pooling-fixtures.py models/all-MiniLM-L6-v2
"""
import json
import os
import shutil
import sys
import tempfile

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

MODES = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}

model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
refs = [json.loads(line) for line in open(os.path.join(root, "tests/fixtures/minilm-l6-v2-reference.jsonl"))]
texts = [r["text"] for r in refs][::4]
torch.set_num_threads(2)
print(f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}", file=sys.stderr)

out_path = os.path.join(root, "tests/fixtures/minilm-pooling-reference.jsonl")
with tempfile.TemporaryDirectory() as tmp, open(out_path, "w") as out:
    for mode, flag in MODES.items():
        folder = os.path.join(tmp, mode)
        shutil.copytree(model_dir, folder, symlinks=False)
        modules = [m for m in json.load(open(os.path.join(folder, "modules.json"))) if not m["type"].endswith("Normalize")]
        json.dump(modules, open(os.path.join(folder, "modules.json"), "w"))
        config = {"word_embedding_dimension": 384}
        config.update({f: f == flag for f in MODES.values()})
        json.dump(config, open(os.path.join(folder, "1_Pooling/config.json"), "w"))
        model = SentenceTransformer(folder, device="cpu")
        vectors = model.encode(texts, batch_size=5, convert_to_numpy=True, normalize_embeddings=False)
        for text, v in zip(texts, vectors):
            out.write(json.dumps({"mode": mode, "text": text, "embedding": [float(f"{x:.8g}") for x in v]}) + "\n")
        print(f"{mode}: {len(texts)} texts, dim {vectors.shape[1]}", file=sys.stderr)
