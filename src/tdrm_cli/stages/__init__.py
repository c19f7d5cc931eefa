"""One module per stage, each with a public `run(cfg) -> Path`."""
