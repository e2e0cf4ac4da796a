"""``python -m q4lab.baselines publish | check``."""

import sys

from q4lab.baselines.publish import main

sys.exit(main())
