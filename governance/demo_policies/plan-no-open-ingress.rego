# title: No ingress from the whole internet to production
# enforcement: hard-mandatory
# description: Deny a Terraform plan (artifact plan) that creates or updates a firewall or security-group rule letting in traffic from 0.0.0.0/0 or ::/0 in production.
package clearway.plan_no_open_ingress

import rego.v1

# Resources whose planned state will exist after the apply (created, updated or replaced).
changed contains rc if {
	some rc in input.artifacts.plan.resource_changes
	some action in rc.change.actions
	action in {"create", "update"}
}

# CIDR blocks a changed resource lets traffic in from, with the port range it opens.
ingress contains [rc.address, block, ports] if {
	some rc in changed
	rc.type == "aws_security_group_rule"
	rc.change.after.type == "ingress"
	some block in blocks(rc.change.after)
	ports := port_text(rc.change.after)
}

ingress contains [rc.address, block, ports] if {
	some rc in changed
	rc.type == "aws_vpc_security_group_ingress_rule"
	some key in ["cidr_ipv4", "cidr_ipv6"]
	block := rc.change.after[key]
	is_string(block)
	ports := port_text(rc.change.after)
}

ingress contains [rc.address, block, ports] if {
	some rc in changed
	rc.type == "aws_security_group"
	some rule in list_at(rc.change.after, "ingress")
	some block in blocks(rule)
	ports := port_text(rule)
}

ingress contains [rc.address, block, "any port"] if {
	some rc in changed
	rc.type == "google_compute_firewall"
	object.get(rc.change.after, "direction", "INGRESS") == "INGRESS"
	some block in list_at(rc.change.after, "source_ranges")
}

# The list under `key` ([] when it is absent or null).
list_at(obj, key) := obj[key] if is_array(obj[key])

else := []

blocks(rule) := array.concat(list_at(rule, "cidr_blocks"), list_at(rule, "ipv6_cidr_blocks"))

port_text(rule) := sprintf("%v %v-%v", [rule.protocol, rule.from_port, rule.to_port]) if {
	rule.from_port != rule.to_port
} else := sprintf("%v %v", [rule.protocol, rule.from_port]) if {
	rule.from_port
} else := "any port"

# A block is open to the internet when it contains every address of its family: the
# written form does not matter ("0.0.0.0/0", "8.8.8.8/0" and "::/0" are all the internet).
whole_internet(block) if net.cidr_contains(block, "0.0.0.0/0")

whole_internet(block) if net.cidr_contains(block, "::/0")

deny contains msg if {
	input.environment.tier == "production"
	some [address, block, ports] in ingress
	whole_internet(block)
	msg := sprintf(
		"%s opens %s to the whole internet (%s) in %s: allow only the networks that need it",
		[address, ports, block, input.environment.name],
	)
}
