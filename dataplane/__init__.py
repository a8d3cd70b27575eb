"""npemu dataplane: packets in, verdicts out."""
