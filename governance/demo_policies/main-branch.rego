# title: Deploy from main
# enforcement: advisory
# description: Warn when the run deploys a branch other than main.
package clearway.main_branch

import rego.v1

warn contains msg if {
	branch := input.run.parameters.branch
	branch != "main"
	msg := sprintf("run #%v deploys branch %s, not main", [input.run.number, branch])
}
