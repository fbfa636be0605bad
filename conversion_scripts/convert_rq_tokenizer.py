"""Convert the original caption tokenizer (16k character BPE) to a `transformers` fast tokenizer folder.

    python conversion_scripts/convert_rq_tokenizer.py --vocab_file bpe-16k-vocab.json \
        --merges_file bpe-16k-merges.txt --output_dir OUT
"""

from __future__ import annotations

import argparse

from rq_hf.conversion_tokenizer import convert_rq_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab_file", required=True, help="the original bpe-16k-vocab.json")
    parser.add_argument("--merges_file", required=True, help="the original bpe-16k-merges.txt")
    parser.add_argument("--output_dir", required=True, help="folder to create (missing or empty)")
    parser.add_argument("--max_length", type=int, default=32, help="caption length in tokens (default: 32)")
    args = parser.parse_args(argv)
    path = convert_rq_tokenizer(
        args.vocab_file, args.merges_file, args.output_dir, max_length=args.max_length
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
