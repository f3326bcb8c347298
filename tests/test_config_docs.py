"""``docs/configuration.md`` documents every key gpumgr reads, with its default, generated from
the models: the page fails this test when it drifts."""

from __future__ import annotations

from conftest import REPO_ROOT

from gpumgr.config.keydoc import SECTIONS, render_page


def test_the_key_tables_of_the_configuration_page_are_up_to_date() -> None:
    page = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert render_page(page) == page, "run: .venv/bin/python scripts/gen_config_docs.py"


def test_every_section_is_on_the_page() -> None:
    page = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in SECTIONS:
        assert f"<!-- keys:{key} -->" in page
    for key in ("`providers.NAME.max_model_len`", "`providers.NAME.models[i].served_model_name`",
                "`exact_matches.ROUTER_NAME.backend_model`", "`vllm.start_timeout_s`"):  # fmt: skip
        assert key in page
