"""The README's first command: the proxy benchmark's chain, reduced to a few minutes
(wavecam.demo; `python run_demo.py --help` lists its settings)."""

import sys

from wavecam.demo import main
from wavecam.engine.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, "--out"))
