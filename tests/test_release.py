"""One version: pyproject.toml reads brainconv.__version__, CHANGELOG's top entry names it, and the installed
metadata (when installed from this tree) says the same."""

import importlib.metadata
import json
import pathlib
import re
import tomllib

import pytest

import brainconv

ROOT = pathlib.Path(brainconv.__file__).resolve().parents[1]


def test_one_version():
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    assert 'version' not in project['project'] and 'version' in project['project']['dynamic']
    assert project['tool']['setuptools']['dynamic']['version'] == {'attr': 'brainconv.__version__'}
    assert re.fullmatch(r'\d+\.\d+\.\d+', brainconv.__version__)
    top = next(line for line in (ROOT / 'CHANGELOG.md').read_text().splitlines() if line.startswith('## '))
    assert top.split()[1] == brainconv.__version__, top


def test_installed_metadata_matches_when_installed_from_this_tree():
    try:
        dist = importlib.metadata.distribution('brainconv')
    except importlib.metadata.PackageNotFoundError:
        pytest.skip('brainconv is not installed')
    url = json.loads(dist.read_text('direct_url.json') or '{}').get('url', '')
    if url.removeprefix('file://') != str(ROOT):
        pytest.skip(f'the installed brainconv comes from {url or "elsewhere"}, not from {ROOT}')
    assert dist.version == brainconv.__version__

