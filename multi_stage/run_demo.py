"""The README's first command: the whole multi-stage chain on the embedded synthetic dataset
(wavecam.multi_stage.demo; `python run_demo.py --help` lists its settings)."""

from wavecam.multi_stage.demo import main

if __name__ == "__main__":
    main()
