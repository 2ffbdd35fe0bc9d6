"""The README's first command: the whole multi-stage chain on the embedded synthetic dataset
(wavecam.demo; `python run_demo.py --help` lists its settings)."""

from wavecam.demo import main

if __name__ == "__main__":
    main()
