"""Caption tokenizer conversion: the converted fast tokenizer gives the original release's ids."""

from __future__ import annotations

import json
import random
import runpy
import socket
import sys
from pathlib import Path

import pytest
from tokenizers import CharBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rq_hf.conversion_tokenizer import convert_rq_tokenizer, with_bpe_dropout

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer-bpe16k"
VOCAB = FIXTURES / "bpe-16k-vocab.json"
MERGES = FIXTURES / "bpe-16k-merges.txt"
EXPECTED = json.loads((FIXTURES / "expected_ids.json").read_text(encoding="utf-8"))
LENGTH = 32
SCRIPT = Path(__file__).parents[1] / "conversion_scripts" / "convert_rq_tokenizer.py"

EDGE_CAPTIONS = [
    "",
    " ",
    "\t\n\r\n  \u00a0\u3000\u2003",
    "\u200b\ufeff\x00\x07\x7f",
    "A PHOTO OF A CAT",
    "Café crème brûlée, naïve Ångström, Łódź, Dvořák, façade, ÉCOLE, Señor Müller",
    "e\u0301 vs \u00e9, ǅ ﬁ İstanbul ẞ ΣΑΣ",
    "東京タワーの夜景 서울 猫 日本語テキスト",
    "🐱🐶 👩‍👩‍👧 ❤️ 🇰🇷 emoji!!!",
    "!!!???...---***'''\"\"\"(((",
    "what?!... it's 50% off -- $5.99 @user #tag a/b ~ … — «quoted» “smart”",
    "[PAD] [UNK] [pad] [unk] </w> [PAD][UNK]",
    "a " * 40,
    "supercalifragilisticexpialidocious " * 6,
    "one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen, fourteen",
]


def _random_captions(count: int, seed: int = 0) -> list[str]:
    """Captions mixing vocabulary words with accents, CJK, emoji, punctuation, whitespace and case."""
    rng = random.Random(seed)
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    words = sorted(t[: -len("</w>")] for t in vocab if t.endswith("</w>") and t[:-4].isalpha())
    pools = [
        words,
        [w.upper() for w in words[:500]] + [w.capitalize() for w in words[500:1000]],
        ["café", "naïve", "Ångström", "Müller", "señor", "crème", "Łódź", "Dvořák", "ÉCOLE", "e\u0301", "ﬁ"],
        ["東京", "タワー", "서울", "猫", "日本語", "中文字", "ありがとう"],
        ["🐱", "🚌", "👩‍👩‍👧", "❤️", "🇰🇷", "😀😀", "✨"],
        ["!!!", "...", "?!", "---", "'s", '"', "(", ")", "#", "@", "$5.99", "50%", "/", "…", "—", "«"],
        ["  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u200b", "\x00", "\x07"],
        ["[PAD]", "[UNK]", "[pad]", "</w>", "2022", "3.14", "x2", "A4"],
    ]
    weights = [10, 2, 1, 1, 1, 2, 1, 1]
    captions = []
    for _ in range(count):
        pieces = [rng.choice(rng.choices(pools, weights)[0]) for _ in range(rng.randint(0, 45))]
        captions.append("".join(piece + rng.choice([" ", " ", " ", "", "  ", "\t"]) for piece in pieces))
    return captions


@pytest.fixture(scope="module")
def original() -> CharBPETokenizer:
    """The original release's caption tokenizer, built with the `tokenizers` library as the original does."""
    tokenizer = CharBPETokenizer(str(VOCAB), str(MERGES), unk_token="[UNK]", lowercase=True)
    tokenizer.add_special_tokens(["[PAD]"])
    tokenizer.enable_padding(length=LENGTH, pad_id=tokenizer.token_to_id("[PAD]"))
    tokenizer.enable_truncation(max_length=LENGTH)
    return tokenizer


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_rq_tokenizer(VOCAB, MERGES, tmp_path_factory.mktemp("conversion") / "tokenizer")


@pytest.fixture(scope="module")
def converted(converted_dir: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(converted_dir, local_files_only=True)


def _ids(tokenizer: PreTrainedTokenizerFast, texts: str | list[str]) -> list:
    return tokenizer(texts, padding="max_length", truncation=True, max_length=LENGTH)["input_ids"]


def test_release_captions_give_the_expected_ids(original, converted):
    texts = [case["text"] for case in EXPECTED["cases"]]
    expected = [case["ids"] for case in EXPECTED["cases"]]
    assert EXPECTED["context_length"] == LENGTH and EXPECTED["pad_id"] == 0
    assert [encoding.ids for encoding in original.encode_batch(texts)] == expected
    assert _ids(converted, texts) == expected
    assert [_ids(converted, text) for text in texts] == expected


def test_edge_captions_match_the_original_construction(original, converted):
    expected = [encoding.ids for encoding in original.encode_batch(EDGE_CAPTIONS)]
    assert _ids(converted, EDGE_CAPTIONS) == expected
    assert [_ids(converted, text) for text in EDGE_CAPTIONS] == expected


def test_generated_captions_match_the_original_construction(original, converted):
    captions = _random_captions(400)
    expected = [encoding.ids for encoding in original.encode_batch(captions)]
    assert sum(ids[-1] != 0 for ids in expected) > 50, "too few over-long captions generated"
    assert sum(1 in ids for ids in expected) > 50, "too few captions with unknown characters generated"
    assert _ids(converted, captions) == expected
    assert [_ids(converted, text) for text in captions] == expected


def test_empty_and_blank_captions_are_all_padding(converted):
    assert _ids(converted, ["", "   ", "\t\n\u200b"]) == [[0] * LENGTH] * 3


def test_over_long_captions_keep_their_first_tokens(converted):
    text = "a red bus and a blue car " * 10
    untruncated = converted(text)["input_ids"]
    assert len(untruncated) > LENGTH
    assert _ids(converted, text) == untruncated[:LENGTH]


def test_no_bos_eos_and_length_defaults_to_model_max_length(converted):
    assert converted("a cat")["input_ids"] == [1022, 3083]
    assert converted(["a cat"], padding="max_length", truncation=True)["input_ids"] == [
        [1022, 3083] + [0] * (LENGTH - 2)
    ]


def test_saved_folder_loads_offline_as_a_fast_tokenizer(converted_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access during an offline load")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir))
    assert sorted(p.name for p in converted_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in converted_dir.parent.iterdir()] == ["tokenizer"], "temporary folder left behind"
    assert isinstance(tokenizer, PreTrainedTokenizerFast) and tokenizer.is_fast
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("[PAD]", 0)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("[UNK]", 1)
    assert tokenizer.bos_token is None and tokenizer.eos_token is None
    assert tokenizer.model_max_length == LENGTH
    assert tokenizer.padding_side == "right" and tokenizer.truncation_side == "right"
    assert len(tokenizer) == 16384


def test_max_length_sets_the_default_caption_length(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(
        convert_rq_tokenizer(VOCAB, MERGES, tmp_path / "tok", max_length=4)
    )
    assert tokenizer.model_max_length == 4
    assert tokenizer(["a painting of a cat", "a"], padding="max_length", truncation=True)["input_ids"] == [
        [1022, 2690, 1974, 1022],
        [1022, 0, 0, 0],
    ]


def test_existing_empty_output_dir_is_filled(tmp_path):
    (tmp_path / "tok").mkdir()
    convert_rq_tokenizer(VOCAB, MERGES, tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_bpe_dropout_copy_matches_the_original_dropout_and_leaves_the_tokenizer_alone(converted):
    text = "an extraordinarily beautiful photograph of mountains"
    deterministic = _ids(converted, text)

    fully_dropped = with_bpe_dropout(converted, 1.0)
    original_dropped = CharBPETokenizer(
        str(VOCAB), str(MERGES), unk_token="[UNK]", lowercase=True, dropout=1.0
    )
    original_dropped.add_special_tokens(["[PAD]"])
    assert fully_dropped(text)["input_ids"] == original_dropped.encode(text).ids

    dropped = with_bpe_dropout(converted, 0.1)
    samples = {tuple(dropped(text)["input_ids"]) for _ in range(50)}
    assert len(samples) > 1
    assert {dropped.decode(list(ids)) for ids in samples} == {text}
    assert _ids(with_bpe_dropout(converted, 0.0), text) == deterministic
    assert converted.backend_tokenizer.model.dropout is None
    assert _ids(converted, text) == deterministic


@pytest.mark.parametrize("dropout", [-0.1, 1.5, "0.1", None])
def test_bpe_dropout_outside_unit_interval_is_rejected(converted, dropout):
    with pytest.raises(ValueError, match="dropout: expected a float in \\[0, 1\\]"):
        with_bpe_dropout(converted, dropout)


def test_bpe_dropout_needs_a_bpe_fast_tokenizer():
    with pytest.raises(TypeError, match="tokenizer: expected a fast tokenizer with a BPE model, got str"):
        with_bpe_dropout("tokenizer", 0.1)


def test_missing_files_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab_file: expected an existing file, got .*missing.json"):
        convert_rq_tokenizer(tmp_path / "missing.json", MERGES, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="merges_file: expected an existing file, got .*missing.txt"):
        convert_rq_tokenizer(VOCAB, tmp_path / "missing.txt", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="vocab_file: expected an existing file"):
        convert_rq_tokenizer(tmp_path, MERGES, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("vocab_text", "merges_text", "message"),
    [
        ("not json", None, "vocab_file: expected a JSON file"),
        ('["a", "b"]', None, "vocab_file: expected a JSON object of token -> id"),
        ('{"a": 0, "[PAD]": 1}', None, "vocab_file: expected a vocabulary containing '\\[UNK\\]'"),
        (None, "#version: 0.2\na b c\n", "merges_file: expected BPE merges over the tokens of vocab_file"),
        ('{"[PAD]": 0, "[UNK]": 1, "a": 2}', None, "merges_file: expected BPE merges over the tokens"),
    ],
)
def test_malformed_files_are_rejected_without_output(tmp_path, vocab_text, merges_text, message):
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(vocab_text or VOCAB.read_text(encoding="utf-8"), encoding="utf-8")
    merges.write_text(merges_text or MERGES.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        convert_rq_tokenizer(vocab, merges, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]


@pytest.mark.parametrize("max_length", [0, -1, 2.5, True])
def test_bad_max_length_is_rejected(tmp_path, max_length):
    with pytest.raises(ValueError, match="max_length: expected a positive int"):
        convert_rq_tokenizer(VOCAB, MERGES, tmp_path / "out", max_length=max_length)


def test_non_empty_output_dir_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for target in (tmp_path / "out", tmp_path / "file"):
        with pytest.raises(ValueError, match="^output_dir: expected a"):
            convert_rq_tokenizer(VOCAB, MERGES, target)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_conversion_script_writes_a_loadable_folder(tmp_path, monkeypatch, original):
    out = tmp_path / "tokenizer"
    argv = ["convert_rq_tokenizer.py", "--vocab_file", str(VOCAB), "--merges_file", str(MERGES)]
    monkeypatch.setattr(sys, "argv", argv + ["--output_dir", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    text = "Eiffel tower on a desert."
    assert _ids(AutoTokenizer.from_pretrained(out), [text]) == [original.encode(text).ids]
