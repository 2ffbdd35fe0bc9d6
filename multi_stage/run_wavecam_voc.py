"""WaveCAM multi-stage pipeline on VOC: `python run_wavecam_voc.py --help` lists the passes and flags."""

import sys

from wavecam.multi_stage.runner import main

if __name__ == "__main__":
    sys.exit(main("voc"))
