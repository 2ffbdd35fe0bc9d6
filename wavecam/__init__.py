"""wavecam: Wave-like Class Activation Map with Representation Fusion for WSSS."""

__version__ = "0.1.0"
