"""The store: the uniform on-disk form of a converted dataset, and the merged output format."""
