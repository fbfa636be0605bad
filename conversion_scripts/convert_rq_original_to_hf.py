"""Convert an original RQ-VAE / RQ-Transformer release into Hugging Face folders.

    python conversion_scripts/convert_rq_original_to_hf.py --checkpoint_dir DIR --output_dir OUT [--use_ema]

The same as ``rq-hf convert``; see ``rq_hf.conversion`` for the library functions.
"""

import sys

from rq_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
