#!/usr/bin/env python3
"""A tiny random RoBERTa (model_type roberta, as all-distilroberta-v1 and all-roberta-large-v1) saved as a
sentence-transformers folder with its reference outputs, for tests/parity.rs and tests/pipeline.rs.

No RoBERTa weights or tokenizer are on the package registry, so this trains a small byte-level BPE tokenizer
(`tokenizers`, vocabulary 2,000, ByteLevel, RoBERTa's post-processor `<s> $A </s>` and special ids <s> 0,
<pad> 1, </s> 2, <unk> 3) on data/sample.jsonl and the parity texts, and builds a seeded random RobertaModel
with it (hidden 64, 2 layers, 4 heads, positions after the padding index), mean pooling, Normalize,
max_seq_length 128.

  tests/fixtures/tiny-roberta, tests/fixtures/tiny-roberta-reference.jsonl (the 64 parity texts with their
  input ids and embeddings)

    scripts/bench --setup-python     # target/stvenv: torch 2.15.0 + sentence-transformers 6.2.0 from PyPI
    target/stvenv/bin/python scripts/make-roberta-fixtures.py
"""
import os
import sys

import torch
import transformers
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_fixtures import corpus, root, save_folder, start, tidy, write_reference  # noqa: E402

start()

specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
assert [tok.token_to_id(s) for s in specials] == [0, 1, 2, 3, 4]
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                            pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
config = transformers.RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5,
                                    pad_token_id=1, bos_token_id=0, eos_token_id=2)
name = "tiny-roberta"
torch.manual_seed(20261207)
out = os.path.join(root, "tests/fixtures", name)
save_folder(transformers.RobertaModel(config, add_pooling_layer=False), fast, out, 128, "mean")
st = SentenceTransformer(out, device="cpu")
vectors = write_reference(st, name)
tidy(out)
print(f"{name}: vocab {config.vocab_size}, dim {vectors.shape[1]}, max_seq_length {st.max_seq_length}", file=sys.stderr)
