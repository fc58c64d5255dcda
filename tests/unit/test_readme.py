"""The README's config reference is the one the code generates (docs cannot drift from code)."""

from pathlib import Path

from shipyard.config import reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_config_reference_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end].strip() == reference_markdown().strip(), (
        "README config reference is stale: run `make docs`"
    )


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
