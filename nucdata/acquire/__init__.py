"""nucdata.acquire."""
