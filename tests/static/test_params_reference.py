"""docs/params.md is what the settings models generate: a setting is declared (and documented) once."""

from __future__ import annotations

from components.settings import reference


def test_the_committed_params_reference_is_what_the_models_generate():
    assert reference.DOC.read_text() == reference.render(), \
        "docs/params.md disagrees with components/settings/: run `python -m components.settings.reference`"


def test_every_key_says_what_it_means():
    blank = [line.split("|")[1].strip() for line in reference.render().splitlines()
             if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not blank, f"add a Field(description=...) to: {blank}"
