"""`make docs`: refresh the generated parts of README.md (config reference, benchmark table)."""

from __future__ import annotations

import re
from pathlib import Path

from shipyard.config.jobs import CurveSection, SearchParam, TuneSection, reference_markdown
from shipyard.config.serving import ServingConfig

ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)


def main() -> None:
    readme = ROOT / "README.md"
    text = replace_block(readme.read_text(), "config-reference", reference_markdown())
    text = replace_block(text, "serving-reference", reference_markdown(ServingConfig))
    text = replace_block(text, "tune-reference", reference_markdown(TuneSection, "tune."))
    text = replace_block(text, "curve-reference", reference_markdown(CurveSection, "curve."))
    text = replace_block(
        text, "search-param-reference", reference_markdown(SearchParam, "tune.space.NAME.")
    )
    parts = [
        p.read_text()
        for p in (
            ROOT / "benchmarks" / "results" / n
            for n in ("foundation.md", "serving.md", "tuning.md", "drift.md")
        )
        if p.exists()
    ]
    if parts:
        text = replace_block(text, "bench", "\n".join(parts))
    readme.write_text(text)


if __name__ == "__main__":
    main()
