# title: No deploys during a change freeze
# enforcement: hard-mandatory
# description: Deny while the environment is inside one of its freeze windows.
package clearway.freeze

import rego.v1

now_ns := time.parse_rfc3339_ns(input.now)

# The freeze windows that cover `now` (the flag itself is computed by Clearway).
active contains window if {
	some window in input.environment.freeze_windows
	time.parse_rfc3339_ns(window.start) <= now_ns
	now_ns < time.parse_rfc3339_ns(window.end)
}

deny contains msg if {
	input.environment.in_freeze
	some window in active
	msg := sprintf("%s is frozen until %s: %s", [input.environment.name, window.end, window.reason])
}

deny contains msg if {
	input.environment.in_freeze
	count(active) == 0
	msg := sprintf("%s is in a change freeze", [input.environment.name])
}
