# title: Production needs two SRE approvals
# enforcement: hard-mandatory
# description: Deny unless at least two members of group "sre", other than the person who triggered the run, approved it.
package clearway.prod_approvals

import rego.v1

required_approvals := 2

triggered_by := object.get(input, ["run", "triggered_by", "username"], "")

# Distinct SRE approvers who are not the person who triggered the run.
sre_approvers contains approval.username if {
	some approval in input.approvals
	approval.decision == "approve"
	"sre" in approval.groups
	approval.username != triggered_by
}

deny contains msg if {
	count(sre_approvers) < required_approvals
	msg := sprintf(
		"%s needs %d approvals from group sre (not counting %s, who triggered the run); it has %d",
		[input.environment.name, required_approvals, triggered_by, count(sre_approvers)],
	)
}
