"""Fencing: fence builders, the fence chain and its levels."""
