"""The study note that optuna-dashboard shows, written through optuna-dashboard's own call."""

from __future__ import annotations

import optuna

__all__ = ["write_note"]


def write_note(study: optuna.Study, text: str) -> None:
    """Save ``text`` (Markdown) as the study's dashboard note."""
    from optuna_dashboard import save_note

    save_note(study, text)
