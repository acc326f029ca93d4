"""The Python code on the docs site and in the README runs, so it cannot rot.

Each page's ``python`` blocks run in order, in one namespace per page. A block whose first line is a
``# not run:`` comment (it needs a GPU, the hub or hours) is skipped, with that reason in the page.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text()) if not b.lstrip().startswith("# not run:")]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_on_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, code in enumerate(blocks(page), 1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)
        except Exception as err:
            pytest.fail(f"{page.relative_to(ROOT)}, block {number}: {type(err).__name__}: {err}")


def test_the_docs_site_has_every_page_it_promises():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s*([\w/-]+\.md)", nav):
        assert (ROOT / "docs" / page).is_file(), page
