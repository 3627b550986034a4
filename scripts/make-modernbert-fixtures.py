#!/usr/bin/env python3
"""A tiny random ModernBERT saved as a sentence-transformers folder with its reference outputs, for
tests/parity.rs and tests/pipeline.rs.

No ModernBERT weights or tokenizer are on the package registry, so this trains a small byte-level BPE
tokenizer (`tokenizers`, vocabulary 2,000, NFC + ByteLevel as ModernBERT's OLMo tokenizer, `[CLS] $A [SEP]`)
on data/sample.jsonl and the parity texts, and builds a seeded random ModernBertModel with it: hidden 64,
4 layers (global attention on layers 0 and 3, sliding-window attention of 16 tokens on 1 and 2, so rows
past 8 tokens either way see the window), 4 heads, GeGLU MLP of 96, RoPE thetas 160,000 (global) and
10,000 (local), no biases, final norm. Weights are drawn with std 0.2 (transformers' 0.02 leaves attention
nearly uniform, and then a wrong theta or no rotation at all would still pass). Mean pooling and Normalize, as nomic-ai/modernbert-embed-base;
max_seq_length 128.

  tests/fixtures/tiny-modernbert:            the folder (config.json in transformers 5's layout: layer_types,
                                             rope_parameters)
  tests/fixtures/tiny-modernbert-reference.jsonl: the 64 parity texts with their input ids and embeddings

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-modernbert-fixtures.py

With `--bench DIR` it writes instead, for scripts/bench, a model of ModernBERT-base's real size with random
weights (transformers' defaults: hidden 768, 22 layers, 12 heads, GeGLU 1152, window 128) and the same
tokenizer, mean pooling, max_seq_length 512, to DIR.
"""
import os
import sys

import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_fixtures import corpus, parity, root, save_folder, start, tidy, write_reference  # noqa: E402

start()

specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
tok = Tokenizer(models.BPE(unk_token=None))
tok.normalizer = normalizers.NFC()
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                   special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3, 4]
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                            pad_token="[PAD]", mask_token="[MASK]")
vocab = tok.get_vocab_size()

if len(sys.argv) == 3 and sys.argv[1] == "--bench":
    torch.manual_seed(20261207)
    base = transformers.ModernBertConfig(vocab_size=vocab, pad_token_id=3, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)
    save_folder(transformers.ModernBertModel(base), fast, sys.argv[2], 512, "mean")
    print(f"{sys.argv[2]}: ModernBERT-base size, random weights", file=sys.stderr)
    sys.exit(0)

config = transformers.ModernBertConfig(
    vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    max_position_embeddings=512, local_attention=16, global_attn_every_n_layers=3, global_rope_theta=160000.0,
    local_rope_theta=10000.0, initializer_range=0.2, pad_token_id=3, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)
assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"], config.layer_types
name = "tiny-modernbert"
torch.manual_seed(20261207)
out = os.path.join(root, "tests/fixtures", name)
save_folder(transformers.ModernBertModel(config), fast, out, 128, "mean")
st = SentenceTransformer(out, device="cpu")
vectors = write_reference(st, name)
tidy(out)
longest = max(len(st.tokenizer(t)["input_ids"]) for t in parity)
print(f"{name}: vocab {vocab}, dim {vectors.shape[1]}, max_seq_length {st.max_seq_length}, longest parity text {longest} tokens",
      file=sys.stderr)
