"""The sensor's rules: indicator packs, the matcher, the allowlist, and the rule set that
reloads them all (``ruleset``)."""
