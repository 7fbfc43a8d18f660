"""The evaluation protocol (design section 2): the trained stages, the defender's substitute,
metrics, a workdir's config, config validation and `experiment` (one run)."""
