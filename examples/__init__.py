"""Example apps that use the worker through its public contract only (see each README.md)."""
