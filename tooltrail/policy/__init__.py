"""Policy engine (SPEC §4)."""
