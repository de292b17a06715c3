"""Each trial of a study handed out once it is finished, however often the study is read."""

from __future__ import annotations

from optuna.trial import FrozenTrial

__all__ = ["FinishedScan"]


class FinishedScan:
    """Hands out each trial of a study once it is finished, however often the study is read.

    Trials are numbered from 0 in the order a read lists them; those read while still
    open (running, waiting) are looked at again on each read until they finish.
    """

    def __init__(self) -> None:
        self.upto = 0  # trials below this number have been read
        self.open: set[int] = set()  # of those, the ones not finished when last read

    def newly_finished(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """The trials of ``trials`` that finished since the last call (all, the first time)."""
        if any(trials[n].number != n for n in (0, len(trials) - 1) if trials):
            self.upto, self.open = 0, set()  # not numbered as expected: look at them all
        again = [trials[n] for n in sorted(self.open) if n < len(trials)]
        fresh = trials[self.upto :]
        self.upto = max(self.upto, len(trials))
        done = [t for t in (*again, *fresh) if t.state.is_finished()]
        self.open = (self.open | {t.number for t in fresh}) - {t.number for t in done}
        return done
