"""Progress bars show to a person at a terminal, never in logs, tests or when the caller turns them off."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils.data import TensorDataset

from trainer.core.loop import evaluate
from trainer.core.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal, enabled, shown", [(True, True, True), (True, False, False),
                                                      (False, True, False)])  # fmt: skip
def test_a_bar_shows_only_on_a_terminal_when_asked(terminal, enabled, shown):
    out = Terminal() if terminal else io.StringIO()
    assert list(progress_bar(range(3), enabled=enabled, desc="work", file=out)) == [0, 1, 2]
    assert ("work" in out.getvalue()) is shown


def test_evaluate_with_progress_keeps_a_captured_stderr_clean(capsys):
    data = TensorDataset(torch.rand(10, 1, 4, 4), torch.randint(0, 2, (10,)), torch.arange(10))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    assert evaluate(model, data, batch_size=3, progress=True) == evaluate(model, data, batch_size=3)
    assert capsys.readouterr().err == ""  # not a terminal
