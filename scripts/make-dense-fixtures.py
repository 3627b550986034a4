#!/usr/bin/env python3
"""Dense-module models and their reference outputs, made by Python sentence-transformers, for tests/parity.rs
and tests/pipeline.rs.

Two models on the real all-MiniLM-L6-v2 transformer, with seeded random Dense modules after its pooling, saved
by sentence-transformers itself (so in the module names and Pooling config format of the version that saves
them):

  a: Pooling (mean), Dense 384 -> 128 (Tanh, bias), Dense 128 -> 96 (Identity, no bias), Normalize;
     Dense weights in model.safetensors.
  b: Pooling (cls), Dense 384 -> 64 (GELU, bias, use_residual: a projected residual),
     Dense 64 -> 64 (Sigmoid, bias, use_residual: the input added), Dense 64 -> 48 (ReLU), Dense 48 -> 48
     (SiLU); no Normalize; weights in pytorch_model.bin (the older format).

Only what the models add is kept (modules.json, the Pooling and Dense folders and Normalize's), under
tests/fixtures/minilm-dense/{a,b}/; the tests lay them over a copy of models/all-MiniLM-L6-v2. The reference
embeddings of every 4th parity text (16 texts, some past the max length) go to
tests/fixtures/minilm-dense-reference.jsonl, one line per model and text.

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-dense-fixtures.py models/all-MiniLM-L6-v2
"""
import json
import os
import shutil
import sys
import tempfile

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
refs = [json.loads(line) for line in open(os.path.join(root, "tests/fixtures/minilm-l6-v2-reference.jsonl"))]
texts = [r["text"] for r in refs][::4]
torch.set_num_threads(2)
torch.manual_seed(20261206)
print(f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}", file=sys.stderr)


def dense(i, o, act, bias=True, residual=False):
    d = Dense(i, o, bias=bias, activation_function=act, use_residual=residual)
    with torch.no_grad():
        # Weights of the scale a trained projection has (outputs of order 1, activations not saturated).
        d.linear.weight.normal_(0.0, 1.0 / i**0.5)
        if bias:
            d.linear.bias.uniform_(-0.1, 0.1)
        if residual and i != o:
            d.residual.weight.normal_(0.0, 1.0 / i**0.5)
    return d


VARIANTS = {
    "a": (
        "mean",
        [dense(384, 128, torch.nn.Tanh()), dense(128, 96, torch.nn.Identity(), bias=False), Normalize()],
        True,
    ),
    "b": (
        "cls",
        [
            dense(384, 64, torch.nn.GELU(), residual=True),
            dense(64, 64, torch.nn.Sigmoid(), residual=True),
            dense(64, 48, torch.nn.ReLU()),
            dense(48, 48, torch.nn.SiLU()),
        ],
        False,
    ),
}

fixtures = os.path.join(root, "tests/fixtures/minilm-dense")
shutil.rmtree(fixtures, ignore_errors=True)
out_path = os.path.join(root, "tests/fixtures/minilm-dense-reference.jsonl")
with tempfile.TemporaryDirectory() as tmp, open(out_path, "w") as out:
    for name, (mode, head, safetensors) in VARIANTS.items():
        base = SentenceTransformer(model_dir, device="cpu")
        model = SentenceTransformer(modules=[base[0], Pooling(384, pooling_mode=mode)] + head, device="cpu")
        folder = os.path.join(tmp, name)
        model.save(folder, safe_serialization=safetensors)
        # Load it back as users would, then embed.
        model = SentenceTransformer(folder, device="cpu")
        vectors = model.encode(texts, batch_size=5, convert_to_numpy=True, normalize_embeddings=False)
        for text, v in zip(texts, vectors):
            out.write(json.dumps({"model": name, "text": text, "embedding": [float(f"{x:.8g}") for x in v]}) + "\n")
        keep = os.path.join(fixtures, name)
        os.makedirs(keep)
        shutil.copy(os.path.join(folder, "modules.json"), keep)
        for m in json.load(open(os.path.join(folder, "modules.json"))):
            if m["path"]:
                shutil.copytree(os.path.join(folder, m["path"]), os.path.join(keep, m["path"]))
        for dirpath, _, files in os.walk(keep):
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        print(f"{name}: {len(texts)} texts, dim {vectors.shape[1]}, modules {[type(m).__name__ for m in model]}", file=sys.stderr)
