"""gender_jax: facial gender classification by transfer learning in JAX/Flax."""
LABELS = ('female', 'male')  # label index -> name: Female = 0, Male = 1.


class UserError(Exception):
  """A mistake in what the user asked for: command lines print its message as one line."""
