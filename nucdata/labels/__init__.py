"""nucdata.labels."""
