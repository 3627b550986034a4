#!/usr/bin/env python3
"""Reference outputs of sentence-transformers' quantize_embeddings, for the unit tests of src/quantize.rs.

Seeded random float32 "embeddings" (20 rows x 13 dims: not a multiple of 8, so binary packing pads; one
constant dimension, so a zero step), a calibration set of 50 other rows, and what quantize_embeddings makes
of them in each precision. Writes tests/fixtures/quantize-reference.json.

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-quantize-fixtures.py
"""
import json
import os
import sys

import numpy as np
import sentence_transformers
from sentence_transformers.util import quantize_embeddings

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rng = np.random.default_rng(20261206)
emb = rng.normal(0, 0.1, (20, 13)).astype(np.float32)
cal = rng.normal(0, 0.08, (50, 13)).astype(np.float32)
emb[:, 5] = 0.25
cal[:, 5] = 0.25
out = {"sentence_transformers": sentence_transformers.__version__, "dim": 13,
       "embeddings": emb.tolist(), "calibration": cal.tolist(),
       "ranges": {"min": cal.min(axis=0).tolist(), "max": cal.max(axis=0).tolist()}}
for p in ["int8", "uint8", "binary", "ubinary"]:
    out[p] = quantize_embeddings(emb, precision=p, calibration_embeddings=cal).astype(int).tolist()
json.dump(out, open(os.path.join(root, "tests/fixtures/quantize-reference.json"), "w"))
print("wrote tests/fixtures/quantize-reference.json", file=sys.stderr)
