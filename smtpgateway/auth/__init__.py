"""Deciding AUTH attempts: the nine checks as pure rules, the database reads
they need, the batch checker that runs them off the event loop, and the abuse
limits (rate, connections) as values."""
