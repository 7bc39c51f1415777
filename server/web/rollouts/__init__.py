"""The rollouts pages: the list, the new-rollout form and one rollout live."""
