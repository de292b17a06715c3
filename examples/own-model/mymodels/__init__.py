"""Model recipes of a project of one's own, tuned by ``tuner`` (see ../README.md)."""
