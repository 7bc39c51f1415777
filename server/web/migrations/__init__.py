"""The migrations pages: specs, one spec, previews, spec runs waiting for their agent."""
