# title: Destroying data needs security's approval
# enforcement: hard-mandatory
# description: Deny a Terraform plan (artifact plan) that destroys or replaces a stateful resource (database, bucket, volume, queue) until a member of group security, other than the person who triggered the run, approved it.
package clearway.plan_stateful_destroy

import rego.v1

stateful_types := {
	"aws_db_instance", "aws_rds_cluster", "aws_dynamodb_table", "aws_s3_bucket",
	"aws_efs_file_system", "aws_ebs_volume", "aws_elasticache_cluster", "aws_sqs_queue",
	"aws_kms_key", "google_sql_database_instance", "google_storage_bucket",
	"azurerm_storage_account", "azurerm_postgresql_flexible_server",
}

triggered_by := object.get(input, ["run", "triggered_by", "username"], "")

destroyed contains [rc.address, rc.type] if {
	some rc in input.artifacts.plan.resource_changes
	rc.type in stateful_types
	"delete" in rc.change.actions
}

security_approvers contains approval.username if {
	some approval in input.approvals
	approval.decision == "approve"
	"security" in approval.groups
	approval.username != triggered_by
}

deny contains msg if {
	count(security_approvers) == 0
	some [address, type] in destroyed
	msg := sprintf(
		"%s (%s) would be destroyed, with its data: that needs an approval from group security",
		[address, type],
	)
}
