"""Write the Hub model card of every original release to ``<output_dir>/<release name>.md``.

    python model_cards/generate_cards.py [--output_dir model_cards] [--namespace ORG]

Without ``--namespace`` each card's usage snippet loads the converter's output folder ``rq-<release name>``
and shows the conversion command; with it, the Hub repo ``ORG/rq-<release name>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from rq_hf.model_card import make_model_card
from rq_hf.releases import RELEASES


def write_cards(output_dir: str | os.PathLike, namespace: str | None = None) -> list[Path]:
    """Write one card per release (each to a temporary name, then renamed) and return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in RELEASES:
        repo_id = f"{namespace}/rq-{name}" if namespace else None
        content = make_model_card(name, repo_id=repo_id).content
        path = output_dir / f"{name}.md"
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", newline="\n", dir=output_dir, suffix=".tmp", delete=False
        ) as handle:
            handle.write(content)
        os.replace(handle.name, path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=Path(__file__).parent,
        help="folder of the cards (default: this script's folder)",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="Hub user or organisation: snippets load ORG/rq-<release>, not a local folder",
    )
    args = parser.parse_args(argv)
    for path in write_cards(args.output_dir, args.namespace):
        print(path)


if __name__ == "__main__":
    main()
