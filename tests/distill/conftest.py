"""Fixtures the distill tests share."""

from __future__ import annotations

import pytest

from tests.helpers import synthetic_paired


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 600-row paired dataset: a 16-feature source ``src`` with a clean class signal, a noisy 8-feature ``tgt``."""
    return synthetic_paired(tmp_path_factory.mktemp("data") / "toy").root


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """compare's settings on a 300-row toy: 2 teacher and student epochs, 1 fine-tune epoch, CPU."""
    from cmcd_edge.distill.config import DistillConfig

    root = synthetic_paired(tmp_path_factory.mktemp("data") / "toy", n=300).root
    return DistillConfig(data=str(root), source="src", target="tgt", epochs=2, teacher_epochs=2, finetune_epochs=1,
                         device="cpu")
