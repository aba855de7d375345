"""nucdata.catalog."""
