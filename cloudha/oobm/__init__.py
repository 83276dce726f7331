"""Out-of-band management: power drivers and the power-state machine."""
