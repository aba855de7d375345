"""Private plumbing shared by every layer: atomic writes, locks, fault points, the data home,
``.npy`` streams, the allow-list unpickler, progress bars, geometry, instance maps and image
decoding. Nothing here is public API; ``nucdata_models``' core may import it (atomic writes,
progress) and nothing else of nucdata but :mod:`nucdata.errors`.
"""
