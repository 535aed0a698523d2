"""State machines as data: each status enum has its allowed moves in a table next to it, and
`StateMachine.check` is the one test a transition passes (orchestrator.lifecycle calls it
for every status write; the models' `move` methods call it before they change a field)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class IllegalTransition(Exception):
    """Raised when a status change is not allowed from the current state."""


class StateMachine:
    """The allowed moves of one status field. States without an entry are terminal."""

    def __init__(self, name: str, states: Iterable[str], moves: Mapping[str, Iterable[str]]):
        self.name = name
        self.states = frozenset(states)
        self.moves = {state: frozenset(targets) for state, targets in moves.items()}
        unknown = {s for s in self.moves} | {t for ts in self.moves.values() for t in ts}
        unknown -= self.states
        if unknown:
            raise ValueError(f"{name}: unknown states in the table: {sorted(unknown)}")
        self.terminal = frozenset(s for s in self.states if not self.moves.get(s))

    def allows(self, old: str, new: str) -> bool:
        return new in self.moves.get(old, ())

    def check(self, what: str, old: str, new: str) -> None:
        """Raise IllegalTransition unless `what` (e.g. "run 12") may go from old to new."""
        if new not in self.states:
            raise IllegalTransition(f"{what}: {new!r} is not a {self.name} status")
        if not self.allows(old, new):
            if old in self.terminal:
                raise IllegalTransition(f"{what} is {old}, which is final; cannot become {new}")
            raise IllegalTransition(f"{what} is {old}; cannot become {new}")

    def illegal_moves(self) -> list[tuple[str, str]]:
        """Every (old, new) pair of different states the table refuses (for the tests)."""
        return sorted(
            (old, new)
            for old in self.states
            for new in self.states
            if old != new and not self.allows(old, new)
        )
