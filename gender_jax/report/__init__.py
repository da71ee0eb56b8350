"""The comparison report of trained runs: `python -m gender_jax.report RUN_DIR...`."""
