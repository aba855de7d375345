"""nucdata.views."""
