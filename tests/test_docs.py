"""README and docs/: every relative link resolves, and the README's commands are the ones CI runs."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if name.endswith(".md")]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """The anchors of a page's headings (lines starting with # outside code blocks)."""
    found, in_code = set(), False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            elif line.startswith("#") and not in_code:
                found.add(slug(line.lstrip("#")))
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    text = open(os.path.join(ROOT, page)).read()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(ROOT, page)
        assert os.path.exists(resolved), f"{page}: link to {target} ({resolved} does not exist)"
        if anchor and resolved.endswith(".md"):
            assert anchor in anchors(resolved), f"{page}: no heading #{anchor} in {path or page}"


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_starts_with_the_install_and_main_job_then_the_test_command_ci_runs():
    install, tests = readme_commands()[:2]
    assert "pip install -r requirements.txt" in install and "python main.py" in install
    ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if line.strip()
          and not line.startswith("#")]
    assert ci[-1] == tests  # .ci/run ends with exactly the README's test command
    assert any("pip install" in line and "-r requirements.txt" in line for line in ci)


def test_the_readme_is_a_front_page():
    assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES)
def test_no_page_is_left_with_a_placeholder(page):
    assert "<!--" not in open(os.path.join(ROOT, page)).read(), f"{page} still holds an HTML comment placeholder"
