#!/usr/bin/env python3
"""A tiny random embeddinggemma-style model (gemma3_text as a bidirectional encoder) saved as a
sentence-transformers folder with its reference outputs, for tests/parity.rs and tests/pipeline.rs.

No Gemma weights or tokenizer are on the package registry, so this trains a small BPE tokenizer
(`tokenizers`, vocabulary 2,000, Metaspace pieces, `<bos> $A <eos>`, Gemma's special ids: <pad> 0, <eos> 1,
<bos> 2, <unk> 3) on data/sample.jsonl and the parity texts, and builds a seeded random Gemma3TextModel with
it as embeddinggemma-300m is built, smaller: use_bidirectional_attention, hidden 64, 4 layers (sliding,
sliding, full, sliding; window 16, so keys at most 8 tokens away), 4 query heads sharing 2 key/value heads of
head_dim 32 (wider than hidden / heads), query_pre_attn_scalar 24 (not head_dim: the scale is its own
setting), q/k RMSNorm, RoPE thetas 1,000,000 (full) and 10,000 (sliding), GeGLU-tanh MLP of 128, Gemma's
(1 + weight) RMSNorms around attention and MLP, the sqrt(hidden) embedding scale. Weights drawn with std 0.2
(0.02 leaves attention nearly uniform). Then as embeddinggemma's folder: mean pooling, Dense 64 -> 256 and
256 -> 64 (Identity, no bias), Normalize, max_seq_length 128, and its prompts (`query`, `document`, ...).

  tests/fixtures/tiny-gemma-embedding:  the folder
  tests/fixtures/tiny-gemma-embedding-reference.jsonl: the 64 parity texts with their input ids and embeddings,
                                        without a prompt and with the `query` prompt

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-gemma-fixtures.py

With `--bench DIR` it writes instead, for scripts/bench, a model of embeddinggemma-300m's transformer size with
random weights (hidden 768, 24 layers, 3 heads and 1 key/value head of 256, MLP 1152, window 512, five
sliding layers to one full) and the same tokenizer and modules (Dense 768 -> 3072 -> 768), max_seq_length 512.
"""
import json
import os
import sys

import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_fixtures import corpus, parity, reference_row, root, save_folder, start, tidy  # noqa: E402

start()

specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials))
tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
                                                   special_tokens=[("<bos>", 2), ("<eos>", 1)])
assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3]
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                            pad_token="<pad>")
vocab = tok.get_vocab_size()
prompts = {"query": "task: search result | query: ", "document": "title: none | text: ",
           "Clustering": "task: clustering | query: "}


def build(config, dense, max_seq_length, out):
    """A sentence-transformers folder at `out`: the Gemma3TextModel of `config`, mean pooling, Dense layers of
    sizes `dense` (Identity, no bias), Normalize, embeddinggemma's prompts."""
    torch.manual_seed(20261207)
    save_folder(transformers.Gemma3TextModel(config), fast, out, max_seq_length, "mean", dense, prompts)
    tidy(out)


common = dict(vocab_size=vocab, pad_token_id=0, eos_token_id=1, bos_token_id=2, use_bidirectional_attention=True,
              hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
if len(sys.argv) == 3 and sys.argv[1] == "--bench":
    config = transformers.Gemma3TextConfig(hidden_size=768, intermediate_size=1152, num_hidden_layers=24, num_attention_heads=3,
                                           num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                                           max_position_embeddings=2048, **common)
    build(config, [768, 3072, 768], 512, sys.argv[2])
    print(f"{sys.argv[2]}: embeddinggemma-300m's transformer size, random weights", file=sys.stderr)
    sys.exit(0)

config = transformers.Gemma3TextConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    query_pre_attn_scalar=24, sliding_window=16, max_position_embeddings=512, initializer_range=0.2,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}, **common)
name = "tiny-gemma-embedding"
out = os.path.join(root, "tests/fixtures", name)
build(config, [64, 256, 64], 128, out)
st = SentenceTransformer(out, device="cpu")
plain = st.encode(parity, batch_size=8, convert_to_numpy=True)
query = st.encode(parity, batch_size=8, convert_to_numpy=True, prompt_name="query")
with open(os.path.join(root, "tests/fixtures", f"{name}-reference.jsonl"), "w") as f:
    for text, v, q in zip(parity, plain, query):
        ids, emb = reference_row(st, text, v)
        qids, qemb = reference_row(st, text, q, prompts["query"])
        f.write(json.dumps({"text": text, "input_ids": ids, "embedding": emb, "query_input_ids": qids, "query_embedding": qemb}) + "\n")
longest = max(len(st.tokenizer(t)["input_ids"]) for t in parity)
print(f"{name}: vocab {vocab}, dim {plain.shape[1]}, max_seq_length {st.max_seq_length}, longest parity text {longest} tokens",
      file=sys.stderr)
