"""build_tokenizer: the offline byte-level BPE of the tiny and embedded pipelines.

It must give the same vocabulary in every process (the embedded pipeline's text encoder has one
embedding row per token id, so a rebuild must number tokens the same way), encode any text
without unknown tokens, and learn the corpus's words as tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
from tokenizers import pre_tokenizers  # noqa: E402

from mmdg_lite.pipelines import build_tokenizer  # noqa: E402
from mmdg_lite.pipelines.tiny import BOS, DEFAULT_CORPUS, EOS  # noqa: E402

CORPUS = ["a red circle", "a green square", "a blue triangle", "a yellow circle", "a shape"]

_DUMP = ("import json, sys; from mmdg_lite.pipelines import build_tokenizer; "
         "t = build_tokenizer(json.loads(sys.argv[1])); "
         "print(json.dumps([sorted(t.get_vocab().items()), t('a red circle, a blue square').input_ids]))")


def _in_fresh_process(corpus: list[str], hash_seed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", _DUMP, json.dumps(corpus)], capture_output=True, text=True,
                         env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_same_vocabulary_in_every_process():
    """tokenizers' BpeTrainer numbered tokens in a per-process hash order: three fresh processes
    built three different vocabularies from the default corpus (measured before the fix)."""
    runs = [_in_fresh_process(CORPUS, seed) for seed in ("0", "1")]
    assert all(r == runs[0] for r in runs[1:])
    here = build_tokenizer(CORPUS)
    assert sorted(here.get_vocab().items()) == [tuple(p) for p in runs[0][0]]


def test_vocabulary_layout_and_every_byte_encodes():
    tok = build_tokenizer(CORPUS)
    vocab = tok.get_vocab()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == 256
    assert vocab[BOS] == 0 and vocab[EOS] == 1
    assert [vocab[c] for c in alphabet] == list(range(2, 258))
    assert [vocab[c + "</w>"] for c in alphabet] == list(range(258, 514))
    assert len(set(vocab.values())) == len(vocab) == max(vocab.values()) + 1
    # text the corpus never showed: digits, punctuation, accents, another script; no unknown token
    text = "zebra 42 ü, ç! 猫"
    ids = tok(text).input_ids
    assert ids[0] == vocab[BOS] and ids[-1] == vocab[EOS] and vocab[EOS] not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_corpus_words_become_single_tokens_most_frequent_first():
    tok = build_tokenizer(CORPUS)
    for caption in CORPUS:  # lower-cased, extra spaces folded, as CLIP's normaliser does
        tokens = tok.convert_ids_to_tokens(tok(caption.upper().replace(" ", "  ")).input_ids)[1:-1]
        assert tokens == [w + "</w>" for w in caption.split()]
    # the first merge is the most frequent adjacent pair (ties: the smallest), counted by hand
    words = [w for c in CORPUS for w in c.split()]
    pairs: dict[tuple[str, str], int] = {}
    for w in words:
        sym = [*w[:-1], w[-1] + "</w>"]
        for p in zip(sym, sym[1:]):
            pairs[p] = pairs.get(p, 0) + 1
    top = max(pairs.values())
    first = min(p for p, c in pairs.items() if c == top)
    vocab = tok.get_vocab()
    assert vocab["".join(first)] == 514  # the first token after the two byte blocks


def test_vocab_size_caps_the_merges_and_is_checked():
    full = build_tokenizer(CORPUS)
    capped = build_tokenizer(CORPUS, vocab_size=520)
    assert len(capped) == 520 < len(full)
    by_id = lambda t: sorted(t.get_vocab().items(), key=lambda kv: kv[1])  # noqa: E731
    assert by_id(capped) == by_id(full)[:520]
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 514; got 400"):
        build_tokenizer(CORPUS, vocab_size=400)
    with pytest.raises(ValueError, match="corpus must be a non-empty list of strings"):
        build_tokenizer("a red circle")
    with pytest.raises(ValueError, match="corpus must be a non-empty list of strings"):
        build_tokenizer(["a red circle", 3])


def test_default_corpus_fits_the_default_vocabulary():
    tok = build_tokenizer()
    assert len(tok) < 600  # every merge of the default corpus was learned, none cut off
    for caption in DEFAULT_CORPUS:
        assert len(tok(caption).input_ids) == len(caption.split()) + 2


def test_build_tokenizer_needs_room_for_a_prompt_token():
    """build_tokenizer(model_max_length=2) tokenized every prompt as [BOS, EOS] (so every prompt
    had the same features); 0 and 1 did not truncate at all. At least 3: BOS, EOS and a token."""
    for bad in (0, 1, 2):
        with pytest.raises(ValueError, match=rf"model_max_length must be an integer >= 3; got {bad}"):
            build_tokenizer(model_max_length=bad)
    t = build_tokenizer(model_max_length=3)
    ids = t(["a red circle"], padding="max_length", max_length=3, truncation=True).input_ids[0]
    assert len(ids) == 3 and ids[0] == t.bos_token_id and ids[-1] == t.eos_token_id
