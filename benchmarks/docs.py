"""`make docs`: refresh the generated parts of the docs (config references in docs/, the\nbenchmark tables in README.md)."""

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
    docs = ROOT / "docs"
    for path, blocks in {
        docs / "training.md": {"config-reference": reference_markdown()},
        docs / "serving.md": {"serving-reference": reference_markdown(ServingConfig)},
        docs / "cluster.md": {
            "tune-reference": reference_markdown(TuneSection, "tune."),
            "curve-reference": reference_markdown(CurveSection, "curve."),
            "search-param-reference": reference_markdown(SearchParam, "tune.space.NAME."),
        },
    }.items():
        text = path.read_text()
        for name, body in blocks.items():
            text = replace_block(text, name, body)
        path.write_text(text)
    readme = ROOT / "README.md"
    text = readme.read_text()
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
