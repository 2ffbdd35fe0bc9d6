"""Test an end-to-end WaveCAM segmenter (wavecam.end_to_end.test; --help lists the arguments).

    torchrun --nproc_per_node N end_to_end/test.py --config end_to_end/configs/voc.yaml \
        [--checkpoint PATH] [--work_dir DIR] [--crf] [--set test.eval_set=val ...]
"""

import sys

from wavecam.end_to_end.test import main

if __name__ == "__main__":
    sys.exit(main())
