"""Sphinx configuration for the brainconv docs.

Build (warnings are errors): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

The notebooks live in ``../notebooks`` and are rendered with the outputs they were committed
with (CI executes them separately).  Sphinx only reads sources under ``docs/``, so the build
copies them into ``docs/notebooks/`` when it starts and removes the copies when it ends; nothing
is left in the working tree.
"""

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.abspath('..'))

_NOTEBOOKS = Path(__file__).resolve().parent.parent / 'notebooks'
_COPIES = Path(__file__).resolve().parent / 'notebooks'
_copied = []
_COPIES.mkdir(exist_ok=True)
for _nb in sorted(_NOTEBOOKS.glob('*.ipynb')):
    shutil.copy2(_nb, _COPIES / _nb.name)  # copy2 keeps the mtime: unchanged notebooks are not re-read
    _copied.append(_COPIES / _nb.name)


def _remove_copies(app, exception):
    for path in _copied:
        path.unlink(missing_ok=True)
    if _COPIES.exists() and not any(_COPIES.iterdir()):
        _COPIES.rmdir()


def setup(app):
    app.connect('build-finished', _remove_copies)

import brainconv  # noqa: E402

project = 'brainconv'
author = 'the brainconv authors'
copyright = '2025, the brainconv authors'
release = brainconv.__version__
version = release

extensions = [
    'myst_nb',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb', '.ipynb': 'myst-nb'}
exclude_patterns = ['_build', '**.ipynb_checkpoints', 'Thumbs.db', '.DS_Store']

# Notebooks: show what was saved; never execute here.
nb_execution_mode = 'off'
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3

autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {'show-inheritance': False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = 'furo'
html_title = f'brainconv {release}'
