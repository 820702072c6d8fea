"""Pieces both components use (no torch, no kserve): what the process may run on."""
