"""Writes the web page's bundled sample images (services/inference/ui/static/samples/).

They come from the synthetic generator the quick model trains on (training/synthetic.py), so the
local model segments them sensibly, and they are deterministic: re-running this rewrites the same
bytes. Run from the repository root: `python scripts/make_ui_samples.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.synthetic import render

OUT = Path("services/inference/ui/static/samples")
SEED = 2026
PICKS = (0, 1, 2, 3, 5, 7)
"""Indices whose kinds differ (ellipse, blob, polygon, animal)."""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for index in PICKS:
        sample = render(SEED, index)
        if sample.kind in seen:
            continue
        name = f"{sample.kind}.jpg"
        (OUT / name).write_bytes(sample.jpeg)
        seen[sample.kind] = name
    index_file = [{"name": kind, "file": f"samples/{file}"} for kind, file in sorted(seen.items())]
    (OUT / "index.json").write_text(json.dumps(index_file, indent=1) + "\n")


if __name__ == "__main__":
    main()
