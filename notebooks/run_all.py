"""Execute every notebook in this folder; exit non-zero if any cell fails.

    python notebooks/run_all.py            # execute, leave the files alone
    python notebooks/run_all.py --write    # execute and save the outputs back
    python notebooks/run_all.py 03_vision_digits.ipynb   # only some
    python notebooks/run_all.py --skip 08_online_learning.ipynb   # all but some

Each notebook runs in a fresh kernel on this interpreter (``sys.executable``),
with the notebooks folder as its working directory.  A notebook whose metadata
lists packages under ``brainconv.requires`` (08 needs braintrace, which installs
on Python >= 3.12 only) is skipped, and said so, where one of them is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


class ThisPythonKernel(KernelManager):
    """A python3 kernel on the interpreter running this script, whatever kernelspecs are installed."""

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                          display_name='Python 3', language='python', name='python3')


def run(path: Path, write: bool, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', kernel_manager_class=ThisPythonKernel,
                            resources={'metadata': {'path': str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    return seconds


def missing_requirements(path: Path) -> list[str]:
    """The packages a notebook's metadata says it needs that this interpreter lacks."""
    needs = nbformat.read(path, as_version=4).metadata.get('brainconv', {}).get('requires', [])
    return [name for name in needs if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('notebooks', nargs='*', help='notebook file names (default: every *.ipynb here)')
    parser.add_argument('--skip', nargs='+', default=[], metavar='NAME', help='notebook file names to leave out')
    parser.add_argument('--write', action='store_true', help='save the executed notebooks with their outputs')
    parser.add_argument('--timeout', type=int, default=600, help='seconds allowed per cell (default 600)')
    args = parser.parse_args(argv)
    paths = [HERE / name for name in args.notebooks] or sorted(HERE.glob('*.ipynb'))
    unknown = sorted(set(args.skip) - {path.name for path in paths})
    if unknown:
        parser.error(f'--skip names no notebook to run: {unknown}')
    paths = [path for path in paths if path.name not in args.skip]
    if not paths:
        print(f'no notebooks found in {HERE}')
        return 1
    os.environ.pop('MPLBACKEND', None)  # let the kernel use its inline backend, so figures are saved
    failed, skipped = [], []
    for path in paths:
        missing = missing_requirements(path)
        if missing:
            skipped.append(path.name)
            print(f'{path.name} skipped: needs {", ".join(missing)}', flush=True)
            continue
        print(f'{path.name} ...', flush=True)
        try:
            seconds = run(path, args.write, args.timeout)
        except CellExecutionError as e:
            failed.append(path.name)
            print(f'{path.name} FAILED\n{e}', flush=True)
            continue
        print(f'{path.name} ok in {seconds:.1f} s', flush=True)
    print(f'{len(paths) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
