"""CRD-facing names and types: constants, condition helpers, spec models. Imports nothing above it."""
