"""The config references in docs/ are the ones the code generates (docs cannot drift from code),
the benchmark tables and the README's ratios are the ones the latest results give, and the README
is a front page that links to them."""

import json
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

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


@pytest.mark.parametrize(
    ("doc", "block", "model", "prefix"),
    [
        ("training.md", "config-reference", TrainJobConfig, ""),
        ("serving.md", "serving-reference", ServingConfig, ""),
        ("cluster.md", "tune-reference", TuneSection, "tune."),
        ("cluster.md", "curve-reference", CurveSection, "curve."),
        ("cluster.md", "search-param-reference", SearchParam, "tune.space.NAME."),
    ],
)
def test_config_reference_is_current(doc: str, block: str, model: type, prefix: str) -> None:
    assert generated(REPO / "docs" / doc, block) == reference_markdown(model, prefix).strip(), (
        f"docs/{doc} {block} is stale: run `make docs`"
    )


def generated(path: Path, block: str) -> str:
    text = path.read_text()
    start = text.index(f"<!-- {block}:start -->") + len(f"<!-- {block}:start -->")
    return text[start : text.index(f"<!-- {block}:end -->")].strip()


def test_benchmark_tables_and_the_readme_ratios_are_the_latest_results() -> None:
    from benchmarks.docs import RESULTS, TABLES, ratios

    results = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in TABLES}
    table = ratios(results)
    assert generated(README, "bench-ratios") == table, "README ratios are stale: run `make docs`"
    assert len(table.splitlines()) >= 2 + len(TABLES)  # a header, then a row per result at least
    tables = "\n".join((RESULTS / f"{n}.md").read_text() for n in TABLES).strip()
    assert generated(REPO / "docs" / "benchmarks.md", "bench") == tables, "run `make docs`"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    import re

    text = README.read_text()
    first_screen = "\n".join(text.splitlines()[:60])
    assert "How it fits together" in first_screen and "make demo" in first_screen
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links and all((REPO / link).is_file() for link in links), links
    assert len(text.splitlines()) <= 250  # a front page: the rest lives in docs/
