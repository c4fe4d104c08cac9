"""Render the README's results tables from the results files.

    python scripts/render_results.py [--results results] [--readme README.md] [--check]

Every ``<!-- results:ID -->`` ... ``<!-- /results -->`` block of the README gets the table ID
rendered from ``results/*.json`` (one file per finished run, named after its table cell).
--check changes nothing and exits 1 if the README is stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allnc.report.results import load_results, markdown_blocks, render_tables, update_markdown

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    tables = render_tables(load_results(Path(a.results))) if Path(a.results).is_dir() else {}
    path = Path(a.readme)
    text = path.read_text()
    new = update_markdown(text, tables)
    missing = sorted(set(tables) - set(markdown_blocks(text)))
    if missing:
        print(f"tables without a README block: {', '.join(missing)} (add <!-- results:ID --> ... <!-- /results -->)")
    if a.check:
        return 1 if new != text or missing else 0
    if new != text:
        path.write_text(new)
        print(f"updated {path}")
    else:
        print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
