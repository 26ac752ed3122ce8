"""One module per attribution method; each registers itself in ``ATTRIBUTION_METHODS`` when imported."""
