#!/usr/bin/env python3
"""Tiny random multilingual models with a SentencePiece Unigram tokenizer, saved as sentence-transformers
folders with their reference outputs, for tests/parity.rs and tests/pipeline.rs.

No XLM-RoBERTa weights or tokenizer are on the package registry, so this trains a small Unigram tokenizer
(`tokenizers`, vocabulary 2,000, NFKC + Metaspace as SentencePiece, `<s> $A </s>`) on data/sample.jsonl and
the parity texts, and builds two seeded random models with it (hidden 64, 2 layers, 4 heads):

  tests/fixtures/tiny-xlm-roberta:   model_type xlm-roberta (positions after the padding index), mean
                                     pooling, Normalize, max_seq_length 128
  tests/fixtures/tiny-bert-unigram:  model_type bert with the same Unigram tokenizer (as
                                     paraphrase-multilingual-MiniLM), cls pooling, max_seq_length 128

and writes tests/fixtures/{name}-reference.jsonl: the 64 parity texts with their input ids and embeddings.

`tokenizers`' Unigram trainer is not deterministic from run to run (not even on one thread): a rerun makes an
equally good tokenizer with other pieces, so the folders and their reference files are regenerated and
committed together. (The BPE tokenizers of the other fixture scripts come out byte-identical.)

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-multilingual-fixtures.py

With `--bench DIR` it writes instead, for scripts/bench, an XLM-RoBERTa of multilingual-e5-base's transformer
size with random weights (hidden 768, 12 layers, 12 heads, 3072) and the same tokenizer, mean pooling,
Normalize, max_seq_length 512, to DIR.
"""
import os
import sys

import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_fixtures import corpus, root, save_folder, start, tidy, write_reference  # noqa: E402

start()

specials = ["<s>", "<pad>", "</s>", "<unk>"]
tok = Tokenizer(models.Unigram())
tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=2000, special_tokens=specials, unk_token="<unk>"))
tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                   special_tokens=[("<s>", 0), ("</s>", 2)])
assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3]
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                            pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<unk>")
vocab = tok.get_vocab_size()

if len(sys.argv) == 3 and sys.argv[1] == "--bench":
    torch.manual_seed(20261207)
    config = transformers.XLMRobertaConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                           intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    save_folder(transformers.XLMRobertaModel(config, add_pooling_layer=False), fast, sys.argv[2], 512, "mean")
    print(f"{sys.argv[2]}: multilingual-e5-base's transformer size, random weights", file=sys.stderr)
    sys.exit(0)

common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              pad_token_id=1, bos_token_id=0, eos_token_id=2)
variants = {
    "tiny-xlm-roberta": (transformers.XLMRobertaConfig(max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5, **common),
                         transformers.XLMRobertaModel, "mean"),
    "tiny-bert-unigram": (transformers.BertConfig(max_position_embeddings=512, type_vocab_size=2, **common), transformers.BertModel, "cls"),
}
for name, (config, cls, pooling) in variants.items():
    torch.manual_seed(20261206)
    out = os.path.join(root, "tests/fixtures", name)
    save_folder(cls(config, add_pooling_layer=False), fast, out, 128, pooling)
    st = SentenceTransformer(out, device="cpu")
    vectors = write_reference(st, name)
    tidy(out)
    print(f"{name}: vocab {vocab}, dim {vectors.shape[1]}, max_seq_length {st.max_seq_length}", file=sys.stderr)
