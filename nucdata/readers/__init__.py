"""Readers of native file formats, shared between dataset sources."""
