"""Public PRM formats: one adapter per family behind tdrm's PRM interface (see `base`)."""
