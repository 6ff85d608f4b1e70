"""Run brainstate's own convolution test suite with brainconv's classes substituted.

Not part of CI.  Usage, from the repository root::

    python scripts/brainstate_conv_suite.py [extra pytest arguments]

It copies ``brainstate/nn/_conv_test.py`` of the installed brainstate into a
temporary folder, replaces ``brainstate.nn.Conv1d`` (and every other
convolution class the suite names) by brainconv's class of the same name, and
runs it with pytest outside this repository's strict-promotion conftest.  The
failures that remain are the behavioural differences listed in
``docs/brainstate_differences.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import brainstate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import brainconv  # noqa: E402

NAMES = [f'{stem}{nd}d' for stem in ('Conv', 'ConvTranspose', 'ScaledWSConv') for nd in (1, 2, 3)]


def main(argv):
    assert all(hasattr(brainconv, n) for n in NAMES)
    source = os.path.join(os.path.dirname(brainstate.__file__), 'nn', '_conv_test.py')
    with open(source) as f:
        text = f.read()
    pattern = re.compile(r'brainstate\.nn\.(' + '|'.join(NAMES) + r')\b')
    text, count = pattern.subn(r'brainconv.\1', text)
    text = 'import brainconv\n' + text
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'test_brainstate_conv_suite.py')
        with open(path, 'w') as f:
            f.write(text)
        print(f'brainstate {brainstate.__version__}: {source}, {count} constructor calls substituted')
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
        cmd = [sys.executable, '-m', 'pytest', path, '-q', '-p', 'no:cacheprovider', '-o', 'addopts=',
               '--rootdir', tmp, '-rf', '--tb=line'] + list(argv)
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
