"""Write docs/img/single-host-crash.svg, the picture in docs/simulator.md (a test checks it).

    python scripts/timeline_picture.py

It is ``cloudha simulate examples/scenarios/single-host-crash.toml --plot
docs/img/single-host-crash.svg``; run it after a change to the simulator, the
scenario or cloudha.plot. The test compares the model the picture was drawn
from (the digest in its metadata) and, with the matplotlib version that drew
it, the bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloudha.plot import Timeline, plot_timeline
from cloudha.testing import simulate

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "scenarios" / "single-host-crash.toml"
TARGET = ROOT / "docs" / "img" / "single-host-crash.svg"


def render(path: Path) -> Timeline:
    """Draw the picture of the example scenario into ``path``."""
    return plot_timeline(simulate(SCENARIO), path)


if __name__ == "__main__":
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    render(TARGET)
    sys.stdout.write(f"wrote {TARGET.relative_to(ROOT)}\n")
