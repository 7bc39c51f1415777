"""Migration specs: config migrations written as data (TOML or JSON), not Python."""
