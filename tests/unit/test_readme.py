"""The README's config reference is the one the code generates (docs cannot drift from code)."""

from pathlib import Path

import pytest

from shipyard.config.jobs import (
    CurveSection,
    SearchParam,
    TrainJobConfig,
    TuneSection,
    reference_markdown,
)
from shipyard.config.serving import ServingConfig

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("block", "model", "prefix"),
    [
        ("config-reference", TrainJobConfig, ""),
        ("serving-reference", ServingConfig, ""),
        ("tune-reference", TuneSection, "tune."),
        ("curve-reference", CurveSection, "curve."),
        ("search-param-reference", SearchParam, "tune.space.NAME."),
    ],
)
def test_config_reference_is_current(block: str, model: type, prefix: str) -> None:
    text = README.read_text()
    start = text.index(f"<!-- {block}:start -->") + len(f"<!-- {block}:start -->")
    end = text.index(f"<!-- {block}:end -->")
    assert text[start:end].strip() == reference_markdown(model, prefix).strip(), (
        f"README {block} is stale: run `make docs`"
    )


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
