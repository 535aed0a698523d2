# title: Tests must pass first
# enforcement: hard-mandatory
# description: Deny for every earlier stage whose name contains "test" and that did not succeed.
package clearway.tests_passed

import rego.v1

deny contains msg if {
	some stage in input.previous_stages
	contains(lower(stage.name), "test")
	stage.status != "succeeded"
	msg := sprintf("stage %s must succeed before %s (it is %s)", [stage.name, input.stage.name, stage.status])
}
