"""The generated reference pages (docs/reference.py): the committed ones say what the code and conf/
say now, and the parts they are made of read what they claim to."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs import reference


def test_the_committed_reference_pages_are_up_to_date() -> None:
    """A config key, comment or command changed without `make reference` fails here (and `make docs`)."""
    stale = reference.stale_pages()
    assert not stale, f"stale: {', '.join(path.name for path in stale)}; run `make reference`"


def test_comments_are_read_above_and_beside_each_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "# @package _global_\n"
        "# What this file is.\n"
        "#   python -m pipeline example=command\n"
        "# More about it.\n"
        "top: 1   # beside\n"
        "\n"
        "section:          # the section\n"
        "  # above, first line\n"
        "  # and second\n"
        "  inner: {a: 1}   # and beside\n"
        "  bare: 2\n"
        "  # a comment ended by a blank line\n"
        "\n"
        "  after: 3\n"
    )
    comments = reference.read_comments(config, prefix="group.")
    assert comments.about == "What this file is.\n\nMore about it."
    assert comments.keys == {
        "group.top": "beside",
        "group.section": "the section",
        "group.section.inner": "above, first line and second and beside",
    }
    assert reference.summary(comments.about) == "What this file is."


def test_a_stale_generated_part_is_rewritten_and_missing_markers_fail() -> None:
    page = "prose\n<!-- generated: part -->\nold\n<!-- end generated: part -->\nmore prose\n"
    fresh = reference.render(page, {"part": lambda: "new"})
    assert fresh == "prose\n<!-- generated: part -->\nnew\n<!-- end generated: part -->\nmore prose\n"
    with pytest.raises(ValueError, match="no markers for other"):
        reference.render(page, {"part": lambda: "new", "other": lambda: ""})


def test_every_data_source_of_the_schema_has_its_own_table() -> None:
    schema = reference.Schema()
    sources = reference.data_sources(schema)
    assert set(sources) == {path.stem for path in (reference.CONF / "data").glob("*.yaml")}
    part = reference.data_part(schema)
    for source, section in sources.items():
        assert f"#### `data={source}`" in part
        for key in set(section["properties"]) - {"source"}:
            assert f"`data.{key}`" in part


def test_the_help_of_a_command_names_no_path_of_this_checkout() -> None:
    """predict's default detector is a path below the repository: the page shows it relative, so that
    the page is the same in every checkout."""
    text = reference.help_text("pipeline.predict")
    assert "usage: python -m pipeline.predict" in text
    assert "default: models/detector" in text
    assert str(reference.ROOT) not in text
