"""Use cases shared by node kinds, written against the ports in jukinet.services.ports."""
