"""Fixtures the distill tests share."""

from __future__ import annotations

import pytest

from tests.helpers import synthetic_paired


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 600-row paired dataset: a 16-feature source ``src`` with a clean class signal, a noisy 8-feature ``tgt``."""
    return synthetic_paired(tmp_path_factory.mktemp("data") / "toy").root
