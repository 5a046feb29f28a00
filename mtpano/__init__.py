"""mtpano: label-free multi-task panoramic scene understanding (CLI and app layer)."""

__version__ = "0.1.0"
