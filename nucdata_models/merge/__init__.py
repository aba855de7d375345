"""The bridge from the models to nucdata: splits, build-merged, its report and CLI."""
