"""Stream kinds: the first byte of every stream the gateway opens on a tunnel.

Both ends read this module: the gateway (and a peer node forwarding for it)
writes the byte, the connect client reads it and connects the stream to its
target inside the studio.
"""

STREAM_TOOL = b"T"  # the studio's tool (its HTTP port)
STREAM_SSH = b"S"  # the studio's in-process SSH server
