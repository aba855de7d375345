"""The package version (one home; ``nucdata.__version__`` reads it)."""

VERSION = "0.1.0.dev0"
