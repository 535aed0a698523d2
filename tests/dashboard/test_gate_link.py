"""The link in approval notifications (/gates/<id>/) leads to the gate on its run page."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_gate_link_redirects_to_run_page(client, run_at_gate, approver):
    run, gate = run_at_gate()
    client.force_login(approver)
    response = client.get(f"/gates/{gate.pk}/")
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/#gate-panel"


def test_gate_link_is_404_for_who_may_not_see_it(client, run_at_gate, outsider):
    _, gate = run_at_gate()
    client.force_login(outsider)
    assert client.get(f"/gates/{gate.pk}/").status_code == 404
