"""The `author` run parameter is free text; separation of duties compares it with people
after normalization, so none of the spellings found from outside lets the author approve."""

from __future__ import annotations

import pytest

from governance import actions, gates, identity
from governance.models import AuditEvent, Gate, Outcome

pytestmark = pytest.mark.django_db

BYPASSES = [
    "sam",
    "SAM",
    "Sam Okafor <sam@northwind.example>",  # git's own format
    "Sam Okafor",  # the full name
    "sam\u200b",  # a zero-width space
    "\uff53\uff41\uff4d",  # full-width "ｓａｍ"
    "  sam@NORTHWIND.example ",
    "<sam@northwind.example>",
]


@pytest.fixture
def sam(approver):
    approver.first_name, approver.last_name = "Sam", "Okafor"
    approver.email = "sam@northwind.example"
    approver.save()
    return approver


@pytest.mark.parametrize("author", BYPASSES)
def test_every_spelling_of_the_author_is_refused(author, sam, run_at_gate, t0):
    run, gate = run_at_gate(now=t0, parameters={"author": author})
    with pytest.raises(gates.GateRefused) as info:
        actions.approve_gate(gate, actor=sam, now=t0)
    assert info.value.rule == "separation-of-duties"
    assert "is the author of the change" in info.value.message
    event = AuditEvent.objects.get(action="gate.approve", outcome=Outcome.DENIED)
    assert event.actor_id == sam.pk
    assert not Gate.objects.decidable_by(sam).filter(pk=gate.pk).exists()


@pytest.mark.parametrize("author", ["sara", "Samuel", "Sam Okafor-Smith", "sam2@northwind.example"])
def test_other_people_are_not_taken_for_the_author(author, sam, run_at_gate, t0):
    run, gate = run_at_gate(now=t0, parameters={"author": author})
    assert gates.sod_violation(run, sam, environment=gate.environment) is None


def test_normalize():
    assert identity.normalize("  Ｓａｍ\u200b  Okafor ") == "sam okafor"
    assert identity.names_in("Sam Okafor <Sam@Example.org>") == {
        "sam okafor <sam@example.org>",
        "sam okafor",
        "sam@example.org",
    }
