"""`python -m pipeline.dashboards [--check]`: write (or check) the generated Grafana files."""

from __future__ import annotations

import sys

from pipeline.dashboards.generate import main

sys.exit(main(sys.argv[1:]))
