"""The package version (one place: ``zoo.__version__`` and the trained folders' ``library_version``)."""

__version__ = "0.1.0"
