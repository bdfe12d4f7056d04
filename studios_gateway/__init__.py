"""studios-gateway: one Twisted process between studios and the people who use them."""

__version__ = "0.1.0"
