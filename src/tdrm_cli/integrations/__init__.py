"""Hooks that let other RL frameworks use a running `tdrm serve` (see README)."""
