"""allnc: long-tailed image classification with All-around Neural Collapse."""

__version__ = "0.1.0"
