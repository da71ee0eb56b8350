"""gender_jax: facial gender classification by transfer learning in JAX/Flax."""
LABELS = ('female', 'male')  # label index -> name: Female = 0, Male = 1.
