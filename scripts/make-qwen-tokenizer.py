"""Builds a Qwen2/Qwen3-style tokenizer.json from Qwen's byte-level BPE ranks (qwen.tiktoken, 151,643 tokens,
shipped in the PyPI wheel of dashscope; the Hugging Face Hub is not needed).

The vocabulary, the pre-tokenizer pattern and the special tokens are Qwen's; the merges are derived from the
ranks as tiktoken's own BPE builds each token (byte pair merging by rank, below the token's rank, ends in the
two parts the token is merged from): one merge per token, 151,387 in all, as in Qwen2's merges.txt. The tokenizer.json has the shape of Qwen3-Embedding's: NFC, Split by Qwen's regex then
ByteLevel, BPE, and <|endoftext|> appended to every text. It is for tests and benchmarks of the tokenizer.

Usage: python3 scripts/make-qwen-tokenizer.py QWEN_TIKTOKEN OUT_DIR
"""
import base64
import json
import os
import sys

PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main(src, out):
    ranks = {}
    for line in open(src, "rb"):
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    chars = byte_chars()
    text = lambda b: "".join(chars[x] for x in b)
    vocab = {text(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            sys.exit(f"token of rank {rank} is not built from two lower-ranked tokens")
        merges.append((None, None, parts[0], parts[1], rank))
    first = len(ranks)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": first + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            ],
            "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [first], "tokens": ["<|endoftext|>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[text(m[2]), text(m[3])] for m in merges],
        },
    }
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "tokenizer.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    os.replace(tmp, os.path.join(out, "tokenizer.json"))
    print(f"{out}/tokenizer.json: {len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
