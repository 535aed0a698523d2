"""The neutral kernel below both apps: helpers that know no model of either (work batched
until the end of a transaction block, plain SQL built from any model's metadata). Nothing
here imports orchestrator or governance modules outside this package."""
