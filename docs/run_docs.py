"""Run every python code block of README.md and docs/*.md, as given, in order, one process per page.

    python docs/run_docs.py                  # every page
    python docs/run_docs.py docs/event.md    # some pages
    python docs/run_docs.py --list           # the blocks each page has, and which it skips

A page's blocks run in one fresh interpreter (``sys.executable``), one after the other in one
namespace, as a reader pastes them; the repository root is the working directory.  A block
preceded by the line ``<!-- no-run -->`` (a fragment that needs the reader's own objects, say a
flax model to port) is skipped, and said so; the pages in :data:`WHOLE` may skip none.  A page
whose first line is ``<!-- requires: pkg, pkg -->`` is skipped, and said so, where one of those
packages does not import.  Exit status: the number of pages that failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = '<!-- no-run -->'
#: Pages whose every block must run (no ``<!-- no-run -->``).
WHOLE = ('README.md', 'docs/braintrace.md', 'docs/event.md', 'docs/streaming.md')

_FENCE = re.compile(r'^```python[^\n]*\n(.*?)^```', re.S | re.M)
_REQUIRES = re.compile(r'<!--\s*requires:\s*(.*?)\s*-->')


def blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` for every python block of a page, in order."""
    found = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip('\n').rsplit('\n', 1)[-1].strip()
        found.append((text.count('\n', 0, m.start()) + 1, m.group(1), before != SKIP_MARK))
    return found


def script(page: str, found: list[tuple[int, str, bool]]) -> str:
    """One program running the page's blocks in order, naming the block that fails."""
    lines = ['import sys, traceback', 'ns = {"__name__": "__main__"}']
    for line, code, runs in found:
        if runs:
            lines.append(f'try:\n    exec(compile({code!r}, {f"{page}:{line}"!r}, "exec"), ns)\nexcept BaseException:\n'
                         f'    traceback.print_exc()\n    print({f"FAILED: the block at {page}:{line}"!r})\n'
                         f'    sys.exit(1)')
    return '\n'.join(lines) + '\n'


def missing(text: str) -> list[str]:
    m = _REQUIRES.search(text.split('\n', 1)[0])
    names = [n.strip() for n in m.group(1).split(',')] if m else []
    return [n for n in names if importlib.util.find_spec(n) is None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pages', nargs='*', help='pages to run (default: README.md and docs/*.md)')
    parser.add_argument('--list', action='store_true', help='list the blocks, run nothing')
    parser.add_argument('--timeout', type=int, default=600, help='seconds per page')
    args = parser.parse_args(argv)
    pages = args.pages or ['README.md'] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'docs').glob('*.md'))
    failed = 0
    for page in pages:
        text = (ROOT / page).read_text()
        found = blocks(text)
        skipped = [line for line, _, runs in found if not runs]
        if page in WHOLE and skipped:
            print(f"{page}: must run whole, but the blocks at lines {skipped} are marked {SKIP_MARK}")
            failed += 1
            continue
        if args.list:
            print(f"{page}: {len(found)} blocks" + (f", skipping lines {skipped}" if skipped else ''))
            continue
        if not any(runs for _, _, runs in found):
            continue
        absent = missing(text)
        if absent:
            print(f"{page}: skipped ({', '.join(absent)} not installed)")
            continue
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, '-c', script(page, found)], cwd=ROOT, capture_output=True, text=True,
                              timeout=args.timeout)
        took = time.perf_counter() - start
        runs = sum(r for _, _, r in found)
        if proc.returncode:
            failed += 1
            print(f"{page}: FAILED ({took:.0f} s)\n" + textwrap.indent((proc.stdout + proc.stderr)[-4000:], '    '))
        else:
            print(f"{page}: {runs} blocks ran ({took:.0f} s)" + (f", {len(skipped)} skipped" if skipped else ''))
    return failed


if __name__ == '__main__':
    sys.exit(main())
