// live updates: filled in by the dashboard
