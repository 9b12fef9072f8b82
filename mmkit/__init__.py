"""mmkit: a Lightning toolkit for research on attention and output normalizers."""

__version__ = "0.1.0"
