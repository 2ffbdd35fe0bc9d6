"""`python -m wavecam.report`: the report's command line (wavecam.report.cli)."""

import sys

from wavecam.report.cli import main

sys.exit(main())
