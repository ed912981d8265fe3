#!/usr/bin/env python3
"""Lists the lines of an old README that no page of the new docs holds.

    scripts/docs-lost-lines.py OLD_README.md

Used when README.md was split into docs/ (issue 22), to show that no
information was lost: each non-empty line of the old page must appear in
README.md or a page under docs/, compared with heading levels and link
targets ignored (the split changes both). Prints every line it cannot find
and exits 1 if there is one.
"""
import pathlib
import re
import sys


def normal(line):
    line = re.sub(r"^#+ ", "# ", line.strip())
    return re.sub(r"\]\([^)\s]*\)", "]()", line)


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    old = pathlib.Path(sys.argv[1]).read_text().splitlines()
    new = set()
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        new.update(normal(l) for l in page.read_text().splitlines())
    lost = [l for l in old if l.strip() and normal(l) not in new]
    for line in lost:
        print(line)
    print(f"{len(old)} lines, {len(lost)} not found", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
