"""Getting a dataset into the store: fetch (verified downloads, mirrors, the manual route),
archive extraction with budgets, prepare (fetch, convert, check counts, publish), a user's own
labelled images as a dataset (prepare_custom) and verify."""

from nucdata.acquire._archive import extract
from nucdata.acquire._fetch import fetch, sha256sum
from nucdata.acquire._fetch import verify as verify_file
from nucdata.acquire._prepare import is_prepared, prepare, prepare_custom, store_path
from nucdata.acquire._verify import Check, verify, verify_merged, verify_store

__all__ = ["Check", "verify", "extract", "fetch", "is_prepared", "prepare", "prepare_custom", "sha256sum", "store_path", "verify_file", "verify_merged", "verify_store"]
