import os

import jax
import pytest
from hypothesis import settings

# Strict promotion: brainconv must never rely on implicit dtype or rank promotion.
jax.config.update('jax_numpy_dtype_promotion', 'strict')
jax.config.update('jax_numpy_rank_promotion', 'raise')

settings.register_profile('ci', deadline=None, derandomize=True, print_blob=True)
settings.register_profile('dev', deadline=None)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(0)
