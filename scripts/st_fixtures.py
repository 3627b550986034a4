"""What the scripts that make tiny models for tests/fixtures share (make-multilingual-, make-roberta-,
make-modernbert- and make-gemma-fixtures.py): the 64 parity texts and the tokenizer-training corpus, the
versions line, the sentence-transformers folder of a model and tokenizer, sentence-transformers' reference
outputs as JSON lines, and a saved folder tidied for git.
"""
import json
import os
import shutil
import sys
import tempfile

import torch

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = os.path.join(root, "tests/fixtures")
parity = [json.loads(line)["text"] for line in open(os.path.join(fixtures, "minilm-l6-v2-reference.jsonl"))]
corpus = [t for t in (json.loads(line).get("text") for line in open(os.path.join(root, "data/sample.jsonl"))) if t] + parity


def start():
    """Two torch threads (the results do not depend on it) and the versions that made the fixtures."""
    import sentence_transformers
    import tokenizers
    import transformers
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}", file=sys.stderr)


def save_folder(model, tokenizer, out, max_seq_length, pooling, dense=(), prompts=None):
    """`out` as a sentence-transformers folder (replaced if there): Transformer(`model`, `tokenizer`), Pooling
    `pooling`, Dense layers of sizes `dense` (Identity, no bias) when given, Normalize; `prompts` if any."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        modules = [Transformer(tmp, max_seq_length=max_seq_length), Pooling(model.config.hidden_size, pooling_mode=pooling)]
        for i, o in zip(dense, dense[1:]):
            modules.append(Dense(i, o, bias=False, activation_function=torch.nn.Identity()))
        modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
        shutil.rmtree(out, ignore_errors=True)
        st.save(out)


def reference_row(st, text, vector, prefix=""):
    """A parity text's input ids (of `prefix + text`, truncated as sentence-transformers does) and embedding."""
    ids = st.tokenizer(prefix + text, truncation=True, max_length=st.max_seq_length)["input_ids"]
    return ids, [float(f"{x:.8g}") for x in vector]


def write_reference(st, name):
    """tests/fixtures/{name}-reference.jsonl: the parity texts with their ids and `st`'s embeddings. Returns
    the embeddings."""
    vectors = st.encode(parity, batch_size=8, convert_to_numpy=True)
    with open(os.path.join(fixtures, f"{name}-reference.jsonl"), "w") as f:
        for text, v in zip(parity, vectors):
            ids, emb = reference_row(st, text, v)
            f.write(json.dumps({"text": text, "input_ids": ids, "embedding": emb}) + "\n")
    return vectors


def tidy(folder):
    """A saved folder as it is committed: no generated model card, files readable by all."""
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            if fn == "README.md":
                os.remove(os.path.join(dirpath, fn))
            else:
                os.chmod(os.path.join(dirpath, fn), 0o644)
