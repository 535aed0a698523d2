# title: Deploy inside the change windows
# enforcement: soft-mandatory
# description: Deny outside the environment's change windows (can be overridden with a justification).
package clearway.change_window

import rego.v1

day_names := ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# "Mon/Tue 08:00-18:00". Built with concat, not sprintf: rego-cpp 1.5.2 wraps strings that
# come out of built-ins such as concat/upper/replace in extra quotes when they go through
# sprintf's %s.
describe(window) := concat("", [
	concat("/", [day_names[d] | some d in window.days]),
	" ", window.start, "-", window.end,
])

windows_text := concat(", ", [describe(w) | some w in input.environment.change_windows])

deny contains msg if {
	not input.environment.in_change_window
	msg := concat("", [
		input.environment.name, " is outside its change windows (",
		windows_text, ", ", input.environment.timezone, ")",
	])
}
