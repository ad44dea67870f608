"""reid: person re-identification training framework."""

__version__ = "0.1.0"
