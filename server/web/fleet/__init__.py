"""The fleet: the overview (``/``) and the agent pages, their view models and charts."""
