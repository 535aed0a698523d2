"""A Terraform/OpenTofu plan (`terraform show -json`) is recognised and summarised: add,
change, destroy and replace with the resource addresses; damaged input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance import plans

HERE = Path(__file__).parent / "plans"


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def test_a_network_plan_is_summarised_like_an_approver_reads_it():
    doc = load("network.json")
    assert plans.is_plan(doc)
    summary = plans.summarise(doc)
    assert summary.headline == "3 to add, 1 to change, 1 to destroy"
    assert summary.counts == {"add": 3, "change": 1, "destroy": 1, "replace": 0, "forget": 0}
    assert summary.addresses("add") == [
        "aws_subnet.payments_private_c",
        "aws_route_table_association.payments_private_c",
        "aws_security_group_rule.payments_https_ingress",
    ]
    assert summary.addresses("change") == ["aws_security_group.payments_api"]
    assert summary.addresses("destroy") == ["aws_security_group_rule.legacy_ssh"]
    # data sources (read) and no-op resources change nothing
    every = [c.address for c in summary.changes]
    assert "data.aws_vpc.main" not in every and "aws_vpc.main" not in every
    assert summary.tool_version == "1.9.5"


def test_replacements_in_either_order_forget_and_deposed_objects():
    summary = plans.summarise(load("replace.json"))
    assert summary.addresses("replace") == ["module.db.aws_db_instance.claims", "aws_lb.public"]
    assert summary.addresses("destroy") == ["aws_s3_bucket.audit_exports"]  # deposed: once
    assert summary.addresses("forget") == ["aws_iam_role.legacy"]
    assert summary.headline == "0 to add, 0 to change, 1 to destroy, 2 to replace, 1 to forget"
    as_dict = summary.as_dict()
    assert as_dict["counts"]["replace"] == 2
    assert as_dict["resources"]["replace"][0] == "module.db.aws_db_instance.claims"
    json.dumps(as_dict)  # JSON-ready


def test_an_empty_plan_has_no_changes():
    summary = plans.summarise({"format_version": "1.2", "terraform_version": "1.9.0"})
    assert not summary.has_changes and summary.headline == "no changes"


@pytest.mark.parametrize(
    ("doc", "where", "fragment"),
    [
        ([], "", "a plan is a JSON object, not list"),
        ({"resource_changes": []}, "format_version", "missing or not a string"),
        ({"format_version": "2.0", "resource_changes": []}, "format_version", "not supported"),
        ({"format_version": "1.0", "values": {}}, "", "this is a state, not a plan"),
        ({"format_version": "1.2", "resource_changes": {}}, "resource_changes", "must be a list"),
        ({"format_version": "1.2", "resource_changes": ["x"]}, "resource_changes[0]", "object"),
        (
            {"format_version": "1.2", "resource_changes": [{"change": {"actions": ["create"]}}]},
            "resource_changes[0].address",
            "missing",
        ),
        (
            {"format_version": "1.2", "resource_changes": [{"address": "a.b"}]},
            "resource_changes[0]",
            "has no `change` object",
        ),
        (
            {
                "format_version": "1.2",
                "resource_changes": [{"address": "a.b", "change": {"actions": []}}],
            },
            "resource_changes[0].change.actions",
            "non-empty list",
        ),
        (
            {
                "format_version": "1.2",
                "resource_changes": [{"address": "a.b", "change": {"actions": ["explode"]}}],
            },
            "resource_changes[0].change.actions",
            "unknown action list ['explode']",
        ),
        (
            {
                "format_version": "1.2",
                "resource_changes": [
                    {"address": "a.b", "change": {"actions": ["create"]}},
                    {"address": "a.b", "change": {"actions": ["delete"]}},
                ],
            },
            "resource_changes[1].address",
            "appears twice",
        ),
    ],
)
def test_bad_or_partial_plans_are_clear_errors(doc, where, fragment):
    with pytest.raises(plans.PlanError) as info:
        plans.summarise(doc)
    assert info.value.where == where
    assert fragment in str(info.value)
    if where:
        assert str(info.value).startswith(f"{where}: ")


def test_a_truncated_plan_keeps_its_path_in_the_error():
    doc = load("network.json")
    del doc["resource_changes"][3]["change"]
    summary, error = plans.summary_or_none(doc)
    assert summary is None
    assert error == "resource_changes[3]: has no `change` object"


def test_documents_that_are_not_plans_are_not_recognised():
    for doc in ({"name": "x"}, [1, 2], "text", {"format_version": "1.0", "values": {}}):
        assert not plans.is_plan(doc)
        assert plans.summary_or_none(doc) == (None, "")
