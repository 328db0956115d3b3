"""Self-contained HTML reports (tables and figures embedded) for runs."""
