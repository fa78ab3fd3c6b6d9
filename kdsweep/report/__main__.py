"""``python -m kdsweep.report``: write a sweep's report (see :mod:`kdsweep.report.build`)."""

import sys

from kdsweep.report.build import main

sys.exit(main())
