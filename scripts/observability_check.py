#!/usr/bin/env python3
"""The Python of scripts/observability-check: the check itself lives in
scripts/observability/, one module per job; run.py says what it does."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from observability import run  # noqa: E402

sys.exit(run.main())
