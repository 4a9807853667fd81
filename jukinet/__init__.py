"""jukinet: an open implementation of Japan's resident registry network (住基ネット)."""

__version__ = "0.1.0"
