import os

# Compile time dominates this suite (hundreds of small programs, the transform matrix above all);
# LLVM's -O0 halves it.  XLA's HLO passes (fusion, layout) still run, so the programs tested are
# the ones users run, compiled with less machine-code optimisation.  Set BRAINCONV_TEST_XLA_OPT=1
# to test at XLA's default level.
if not os.environ.get('BRAINCONV_TEST_XLA_OPT'):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402
import pytest
from _configs import SHARE  # noqa: E402  (a bad BRAINCONV_TEST_SHARE fails here, before any test)
from hypothesis import settings

# Strict promotion: brainconv must never rely on implicit dtype or rank promotion.
jax.config.update('jax_numpy_dtype_promotion', 'strict')
jax.config.update('jax_numpy_rank_promotion', 'raise')

settings.register_profile('ci', deadline=None, derandomize=True, print_blob=True)
settings.register_profile('dev', deadline=None)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


def pytest_report_header(config):
    i, n = SHARE
    if n > 1:
        return [f'BRAINCONV_TEST_SHARE={i}/{n}: this run takes share {i} of {n} of the generated oracle cases, '
                f'of the transform matrix\'s layer kinds and of the sharding matrix\'s cells (every test, '
                f'formulation and transform still runs)']
    return []


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _event_kernels_run():
    """Wherever a test runs the 'event' formulation, its event kernel runs, whatever the input's
    density (the result is the same either way; tests of the density switch itself say
    ``event_branch(None)``)."""
    from brainconv.lowering import event_branch
    with event_branch('event'):
        yield
