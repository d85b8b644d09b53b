"""``python -m lab up|down|status ...`` (the same as ``tandem lab ...``)."""

from .cli import main

raise SystemExit(main())
