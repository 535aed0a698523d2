"""Work per pipeline document is bounded: a hostile document is refused early, with a short
error list. The measured attack: 250 KB of 26,112 unknown keys took seconds of CPU to refuse,
with a 2.8 MB error list (6.6 MB over the API). The timing lives in benchmarks/spec_refusal.py;
here the work is counted (YAML events the guard saw, errors collected)."""

from __future__ import annotations

import json

import pytest

from orchestrator import spec

from .conftest import client_for

HEAD = "name: x\nstages: [{name: a, steps: [{name: s, run: x}]}]\n"


def unknown_keys(count: int) -> str:
    return HEAD + "".join(f"k{i:05d}: 1\n" for i in range(count))


@pytest.fixture
def events_seen(monkeypatch):
    seen = []
    feed = spec._Guard.feed

    def counting(self, event):
        seen.append(event)
        return feed(self, event)

    monkeypatch.setattr(spec._Guard, "feed", counting)
    return seen


def test_26112_unknown_keys_are_refused_after_a_few_hundred_events(events_seen):
    text = unknown_keys(26_112)
    assert len(text.encode()) > 250_000
    with pytest.raises(spec.SpecError) as refused:
        spec.parse_pipeline(text)
    assert [e["message"] for e in refused.value.errors] == [
        f"too many keys in one mapping — at most {spec.MAX_MAPPING_KEYS} are allowed"
    ]
    assert refused.value.errors[0]["line"] == 1 + spec.MAX_MAPPING_KEYS  # where it stopped
    assert len(events_seen) < 3 * spec.MAX_MAPPING_KEYS


def test_a_document_with_too_many_nodes_is_refused_before_validation(events_seen):
    # 99 stages of 60 keys each: no mapping is too large, the document is.
    stage = "  - {name: s%d, steps: [{name: a, run: x}], %s}\n"
    extra = ", ".join(f"x{i}: 1" for i in range(60))
    text = "name: big\nstages:\n" + "".join(stage % (n, extra) for n in range(99))
    with pytest.raises(spec.SpecError) as refused:
        spec.parse_pipeline(text)
    [error] = refused.value.errors
    assert error["message"].startswith("the document has too many entries")
    assert len(events_seen) < spec.MAX_NODES * 1.1  # nodes, plus the ends of collections


def test_the_error_list_is_capped_and_says_so():
    text = unknown_keys(spec.MAX_MAPPING_KEYS - 10)  # under every size limit, all unknown
    with pytest.raises(spec.SpecError) as refused:
        spec.parse_pipeline(text)
    errors = refused.value.errors
    assert len(errors) == spec.MAX_ERRORS + 1
    assert errors[-1]["message"].startswith(
        f"more problems were found; only the first {spec.MAX_ERRORS}"
    )
    assert all(e["message"].startswith('unknown key "k') for e in errors[:-1])


def test_a_few_errors_are_all_reported():
    with pytest.raises(spec.SpecError) as refused:
        spec.parse_pipeline(unknown_keys(3))
    assert len(refused.value.errors) == 3


@pytest.mark.django_db
def test_the_api_refuses_the_hostile_document_with_a_small_body(developer):
    response = client_for(developer).post(
        "/api/v1/pipelines/",
        {"slug": "hostile", "definition": unknown_keys(26_112)},
        format="json",
    )
    assert response.status_code == 400
    assert len(response.content) < 2_000
    assert len(json.loads(response.content)["errors"]) == 1
