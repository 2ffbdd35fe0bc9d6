"""Score an end-to-end checkpoint without training (wavecam.end_to_end.evaluate; --help lists the arguments).

    torchrun --nproc_per_node N end_to_end/evaluate.py --config end_to_end/configs/voc.yaml \
        --checkpoint PATH [--split val] [--cams auto|classifier|wavecam] [--work_dir DIR] [--set ...]
"""

import sys

from wavecam.end_to_end.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
