"""What graph-runs serves over HTTP to others: the approvals webhook."""
