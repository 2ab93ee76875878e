"""Pure safeguards on what arrives: the policy checks, the rate limit, the duplicate window."""
