# title: Every new resource carries owner and cost-center tags
# enforcement: soft-mandatory
# description: Deny a Terraform plan (artifact plan) that creates a taggable resource without the tags owner and cost-center (provider default_tags count).
package clearway.plan_required_tags

import rego.v1

required_tags := ["owner", "cost-center"]

# Created resources (also the new half of a replacement) that take tags: their planned
# state has a `tags` attribute, null when none were written.
created contains rc if {
	some rc in input.artifacts.plan.resource_changes
	"create" in rc.change.actions
	is_object(rc.change.after)
	"tags" in object.keys(rc.change.after)
}

tags(rc) := object.union(tag_map(rc.change.after, "tags"), tag_map(rc.change.after, "tags_all"))

# The tags under `key` ({} when absent or null, as an untagged resource has them).
tag_map(after, key) := after[key] if is_object(after[key])

else := {}

missing(rc) := [tag |
	some tag in required_tags
	trim_space(object.get(tags(rc), tag, "")) == ""
]

deny contains msg if {
	some rc in created
	absent := missing(rc)
	count(absent) > 0
	msg := sprintf("%s is created without the tag%s %s", [
		rc.address, plural(absent), concat(", ", absent),
	])
}

plural(items) := "s" if count(items) > 1

else := ""
