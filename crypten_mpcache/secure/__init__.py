"""secure."""
