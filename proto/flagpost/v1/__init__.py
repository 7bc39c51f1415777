"""Generated modules for package flagpost.v1. Regenerate with `make proto`."""
