"""One config dataclass per stage; the machinery they share is `tdrm_cli.config`."""
