from __future__ import annotations

import os
import sys

# Tests import the shared kernels as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
# Keep Helion's own output short in test logs.
os.environ.setdefault("HELION_AUTOTUNE_PROGRESS_BAR", "0")
os.environ.setdefault("HELION_AUTOTUNE_LOG_LEVEL", "WARNING")
