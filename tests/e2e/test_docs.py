"""The documentation is generated from, or checked against, the code."""
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ESTEIRA_BIN", str(ROOT / "build" / "esteira"))


def test_config_doc_matches_help():
    help_text = subprocess.run([BIN, "help"], capture_output=True, text=True, check=True).stdout
    settings = help_text[help_text.index("Settings"):]
    doc = (ROOT / "docs" / "config.md").read_text()
    assert settings.strip() in doc, "docs/config.md is stale: regenerate it from `esteira help`"


def test_readme_lists_every_route():
    routes = (ROOT / "src" / "http" / "routes.c").read_text()
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "api.md").read_text()
    for method, pattern in re.findall(r'\{"(GET|POST|PUT|DELETE|PATCH)", "([^"]+)"', routes):
        base = re.sub(r"\{[^}]*\}.*", "", pattern).rstrip("/") or pattern
        assert base in readme, f"{method} {pattern} is not documented"
