"""``python -m mmkit ...`` is the ``mmkit`` command (:mod:`mmkit.entry`)."""

import sys

from .entry import main

sys.exit(main())
