# title: At most five resources destroyed per deployment
# enforcement: hard-mandatory
# description: Deny a Terraform plan (artifact plan) that destroys or replaces more than five resources; split the change into smaller deployments.
package clearway.plan_max_destroy

import rego.v1

max_destroyed := 5

destroyed contains rc.address if {
	some rc in input.artifacts.plan.resource_changes
	"delete" in rc.change.actions
	not rc.deposed
}

deny contains msg if {
	count(destroyed) > max_destroyed
	msg := sprintf("this plan destroys %d resources (%s); at most %d per deployment: split the change", [
		count(destroyed), concat(", ", sort(destroyed)), max_destroyed,
	])
}
