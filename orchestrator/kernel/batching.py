"""Work collected during a block of a transaction and done once when the block ends: the
audit rows of governance.audit.batch() and the live events of orchestrator.events.batch().

An item kept inside a savepoint nested in the block's transaction leaves a marker in
Django's on-commit list; a rollback to that savepoint removes the marker (Django discards
the on-commit callbacks registered inside it), and the item is dropped with the change it
belonged to. Nothing here imports an app's models.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from django.db import connection, transaction

T = TypeVar("T")


class TransactionBatch(Generic[T]):
    """Items kept during one block, in call order."""

    def __init__(self) -> None:
        self.depth = len(connection.savepoint_ids)
        self.items: list[tuple[T, Any]] = []
        self.closed = False

    def keep(self, item: T) -> bool:
        """Keep `item` for the end of the block; False when there is no open block (the
        caller then does its work at once)."""
        if self.closed or not connection.in_atomic_block:
            return False
        marker = None
        if len(connection.savepoint_ids) > self.depth:
            marker = _marker()
            transaction.on_commit(marker)
        self.items.append((item, marker))
        return True

    def survivors(self) -> list[T]:
        """The items whose savepoint (if any) did not roll back."""
        live = {id(func) for _, func, _ in connection.run_on_commit}
        return [item for item, marker in self.items if marker is None or id(marker) in live]


def _marker() -> Callable[[], None]:
    def rolled_back_with_its_savepoint_if_missing() -> None:
        pass

    return rolled_back_with_its_savepoint_if_missing


@contextlib.contextmanager
def batching(
    current: contextvars.ContextVar,
    make: Callable[[], TransactionBatch],
    finish: Callable[[Any], None],
    name: str,
) -> Iterator[None]:
    """Run the block with a new batch from `make()` in `current`, then `finish(batch)` —
    only when the block ends without an exception (the transaction then rolls back, and
    nothing is written). A nested block joins the outer batch. Must be used inside a
    transaction, as its innermost block."""
    if current.get() is not None:
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError(f"{name} must be used inside a transaction")
    pending = make()
    token = current.set(pending)
    try:
        yield
    finally:
        pending.closed = True
        current.reset(token)
    finish(pending)
