"""The JSON results file every bench front end writes after printing its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_report(report, out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"results written to {out}", file=sys.stderr)
