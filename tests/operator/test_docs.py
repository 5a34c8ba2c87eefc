"""The README's metric list is the catalog, and what the docs show exists."""

from __future__ import annotations

import pathlib
import re

from rlix_plugin.metrics import catalog

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_readme_lists_every_metric_with_its_type_and_labels():
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- metrics -->", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]+) \|", table, re.MULTILINE)
    listed = [
        (name, kind, tuple(label.strip() for label in labels.split(",")) if labels.strip() != "-" else ())
        for name, kind, labels in rows
    ]
    assert listed == [(s.name, s.kind, s.labels) for s in catalog.METRICS]


def test_the_screenshot_and_the_dashboard_the_docs_show_exist():
    for text in ((REPO / "README.md").read_text(), (REPO / "docs" / "operators.md").read_text()):
        for target in re.findall(r"\]\(((?:docs/)?(?:img|grafana)/[^)]+)\)", text):
            path = REPO / target if target.startswith("docs/") else REPO / "docs" / target
            assert path.is_file(), target
    assert (REPO / "docs" / "img" / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
