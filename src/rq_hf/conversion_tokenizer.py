"""Conversion of the original caption tokenizer to a `transformers` fast tokenizer.

The text-to-image releases of RQ-Transformer tokenize captions with `tokenizers.CharBPETokenizer` built
from `bpe-16k-vocab.json` and `bpe-16k-merges.txt` (`unk_token="[UNK]"`, `lowercase=True`), with `[PAD]`
added as a special token, right padding and truncation to 32 and no BOS/EOS. `convert_rq_tokenizer` writes
the same pipeline as a `tokenizer.json` + `tokenizer_config.json` folder, so that

    tok = AutoTokenizer.from_pretrained(folder)
    tok(captions, padding="max_length", truncation=True, max_length=32)["input_ids"]

gives the original ids for every caption. The original trains with BPE dropout 0.1: get such a copy with
`with_bpe_dropout(tok, 0.1)` and use it for training only.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from .atomic_io import write_folder_atomically

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
END_OF_WORD_SUFFIX = "</w>"


def _check_file(name: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: expected an existing file, got {str(path)!r}")
    return path


def _check_vocab(vocab_file: Path) -> None:
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"vocab_file: expected a JSON file, got {str(vocab_file)!r} ({err})") from err
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"vocab_file: expected a JSON object of token -> id, got {str(vocab_file)!r}")
    if UNK_TOKEN not in vocab:
        raise ValueError(
            f"vocab_file: expected a vocabulary containing {UNK_TOKEN!r}, got {str(vocab_file)!r}"
        )


def _build_backend(vocab_file: Path, merges_file: Path) -> Tokenizer:
    """The caption pipeline of the original release as a `tokenizers.Tokenizer` (no padding/truncation)."""
    try:
        model = BPE.from_file(
            str(vocab_file), str(merges_file), unk_token=UNK_TOKEN, end_of_word_suffix=END_OF_WORD_SUFFIX
        )
    except Exception as err:  # `tokenizers` raises a bare Exception for unreadable BPE files
        raise ValueError(
            f"merges_file: expected BPE merges over the tokens of vocab_file, got {str(merges_file)!r} ({err})"
        ) from err
    backend = Tokenizer(model)
    # Lowercase is a separate step: BertNormalizer(lowercase=True) would also strip accents, which the
    # original does not do (its BertNormalizer has lowercase=False, hence strip_accents off).
    backend.normalizer = normalizers.Sequence(
        [normalizers.BertNormalizer(lowercase=False), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.BPEDecoder(suffix=END_OF_WORD_SUFFIX)
    # Same order as the original: [UNK] registered first, then [PAD] (already in the 16k vocabulary at id 0).
    backend.add_special_tokens([UNK_TOKEN, PAD_TOKEN])
    return backend


def convert_rq_tokenizer(
    vocab_file: str | os.PathLike,
    merges_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_length: int = 32,
) -> Path:
    """Write the original caption tokenizer as a folder that `AutoTokenizer.from_pretrained` loads.

    Args:
        vocab_file: the original `bpe-16k-vocab.json`.
        merges_file: the original `bpe-16k-merges.txt`.
        output_dir: folder to create; it must be missing or empty. Written in a temporary sibling folder
            and renamed into place, so it is never left half-written.
        max_length: caption length in tokens (`model_max_length`); the releases use 32.

    Returns:
        The path of the written folder (`tokenizer.json`, `tokenizer_config.json`).
    """
    vocab_file = _check_file("vocab_file", vocab_file)
    merges_file = _check_file("merges_file", merges_file)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length: expected a positive int, got {max_length!r}")
    _check_vocab(vocab_file)
    backend = _build_backend(vocab_file, merges_file)

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }

    def write(folder: Path) -> None:
        backend.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(output_dir, write)


def with_bpe_dropout(tokenizer: PreTrainedTokenizerFast, dropout: float) -> PreTrainedTokenizerFast:
    """A copy of a converted caption tokenizer whose BPE drops each merge with probability `dropout`.

    The original trains with `dropout=0.1` (random sub-word segmentations as augmentation) and evaluates
    and samples without it. The given tokenizer is left unchanged; `dropout=0.0` gives deterministic ids.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or not isinstance(
        tokenizer.backend_tokenizer.model, BPE
    ):
        raise TypeError(
            f"tokenizer: expected a fast tokenizer with a BPE model, got {type(tokenizer).__name__}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1], got {dropout!r}")
    dropped = copy.deepcopy(tokenizer)
    dropped.backend_tokenizer.model.dropout = float(dropout)
    return dropped
