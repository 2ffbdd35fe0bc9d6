"""WaveCAM multi-stage pipeline on COCO: `python run_wavecam_coco.py --help` lists the passes and flags."""

import sys

from wavecam.multi_stage.runner import main

if __name__ == "__main__":
    sys.exit(main("coco"))
