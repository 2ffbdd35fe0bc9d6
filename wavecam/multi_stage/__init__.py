"""The multi-stage pipeline (ResNet CAM -> WaveCAM -> IRN -> pseudo labels), driven by the paper's
boolean pass flags: flags.py (the flags), runner.py (the passes they switch on, in order),
passes/<pass>.py (one module per pass), and the library modules the passes share."""
