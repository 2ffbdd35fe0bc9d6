"""Train WaveCAM end to end (wavecam.end_to_end.train; --help lists the arguments).

    torchrun --nproc_per_node N end_to_end/train.py --config end_to_end/configs/voc.yaml \
        [--work_dir DIR] [--resume auto|PATH] [--set section.key=value ...]
"""

import sys

from wavecam.end_to_end.train import main

if __name__ == "__main__":
    sys.exit(main())
