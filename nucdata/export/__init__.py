"""nucdata.export."""
