import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The example kernels in docs/examples are importable by the tests that run them.
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(scope="module")
def numba_single_threaded():
    """Tiny convs: thread start-up dominates on a shared 2-core runner."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)
