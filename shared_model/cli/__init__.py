"""Console entry points of the shared library: ``retina-data``, ``retina-train``, ``retina-eval``."""
