# title: Deploy inside the change windows
# enforcement: soft-mandatory
# description: Deny outside the environment's change windows (can be overridden with a justification).
package clearway.change_window

import rego.v1

day_names := ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# "Mon/Tue 08:00-18:00"
describe(window) := sprintf("%s %s-%s", [
	concat("/", [day_names[d] | some d in window.days]),
	window.start, window.end,
])

windows_text := concat(", ", [describe(w) | some w in input.environment.change_windows])

deny contains msg if {
	not input.environment.in_change_window
	msg := sprintf("%s is outside its change windows (%s, %s)", [
		input.environment.name, windows_text, input.environment.timezone,
	])
}
