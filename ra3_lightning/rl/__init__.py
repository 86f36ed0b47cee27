"""Pure functions for RL: returns, group advantages, policy losses, KL estimators."""
