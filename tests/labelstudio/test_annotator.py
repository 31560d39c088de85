"""The one simulated annotator: the cells it marks on a true mask, with misses and wrong cells."""

import numpy as np
import pytest

from label_config.grid import Grid
from trainer.core.feedback import AnnotatorConfig, simulated_cells


def _decoy_mask(r0=0, c0=24):
    m = np.zeros((28, 28), dtype=bool)
    m[r0 : r0 + 4, c0 : c0 + 4] = True
    return m


def test_simulated_annotator_marks_exactly_the_decoy_cell():
    grid = Grid.from_cell_px(28, 28, 4)
    cells = simulated_cells(_decoy_mask(), grid, AnnotatorConfig(), np.random.default_rng(0))
    assert cells.sum() == 1 and cells[0, 6]


@pytest.mark.parametrize("miss, wrong, expect", [(1.0, 0.0, 0), (0.0, 1.0, 2)])
def test_simulated_annotator_misses_and_adds_wrong_cells(miss, wrong, expect):
    grid = Grid.from_cell_px(28, 28, 4)
    cells = simulated_cells(
        _decoy_mask(), grid, AnnotatorConfig(miss_rate=miss, wrong_rate=wrong), np.random.default_rng(0)
    )
    assert cells.sum() == expect
