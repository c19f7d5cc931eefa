"""tdrm: temporal-difference-trained process reward models, end to end."""

__version__ = "0.1.0"
