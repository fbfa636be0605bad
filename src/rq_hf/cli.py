"""The ``rq-hf`` command line.

User mistakes (missing files, bad values) end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UserError(Exception):
    """A mistake in the command's arguments or inputs, reported as one line."""


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint_dir", "--checkpoint-dir", required=True,
        help="original release folder (stage1/, stage2/) or a stage-1 folder (config.yaml, model.pt)",
    )
    parser.add_argument("--output_dir", "--output-dir", required=True, help="folder to write (missing or empty)")
    parser.add_argument("--use_ema", "--use-ema", action="store_true", help="convert state_dict_ema")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")


def run_convert(args: argparse.Namespace) -> None:
    from .conversion import convert_original_checkpoint

    path = convert_original_checkpoint(args.checkpoint_dir, args.output_dir, args.use_ema, args.overwrite)
    print(f"Wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rq-hf", description="RQ-VAE / RQ-Transformer tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert an original release to Hugging Face folders")
    add_convert_arguments(convert)
    convert.set_defaults(handler=run_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (UserError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"rq-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
