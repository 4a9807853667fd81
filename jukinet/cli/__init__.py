"""The `jukinet` command line."""
