"""Fuzzing: property-based tests (hypothesis) and OpenAPI-driven fuzzing of the public API."""
