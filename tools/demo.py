"""`make demo`: the main job end to end (grows as the product does)."""
from __future__ import annotations

import sys

from models.cli import main as describe


def main() -> int:
    print("== netadapt-lut demo: the WRN-40-2 architecture description ==")
    return describe(["--arch", "wrn-40-2"])


if __name__ == "__main__":
    sys.exit(main())
