"""The /webhooks page (admin): webhooks, their delivery logs, the add form."""
