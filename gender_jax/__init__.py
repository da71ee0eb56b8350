"""gender_jax: facial gender classification by transfer learning in JAX/Flax."""
import os

LABELS = ('female', 'male')  # label index -> name: Female = 0, Male = 1.


def cache_dir(*parts, environ=None):
  """A folder under $XDG_CACHE_HOME/gender_jax (default ~/.cache/gender_jax): what gender_jax keeps
  between runs of any command (compiled programs, convolution timings). Not made here."""
  environ = os.environ if environ is None else environ
  home = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(home, 'gender_jax', *parts)


class UserError(Exception):
  """A mistake in what the user asked for: command lines print its message as one line."""
