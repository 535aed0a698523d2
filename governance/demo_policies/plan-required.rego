# title: Infrastructure deployments bring their plan
# enforcement: hard-mandatory
# description: Deny a deployment of a platform-team pipeline whose earlier stages produced no Terraform plan (artifact plan, policy_input true), so that no deployment skips planning.
package clearway.plan_required

import rego.v1

deny contains msg if {
	input.pipeline.team == "platform"
	not input.artifacts.plan.format_version
	msg := sprintf(
		"%s deploys infrastructure to %s without a plan: a stage before it must declare the artifact plan (policy_input: true) holding `terraform show -json` output",
		[input.pipeline.slug, input.environment.name],
	)
}
