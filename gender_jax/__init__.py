"""gender_jax: facial gender classification by transfer learning in JAX/Flax."""
import importlib.metadata
import os

LABELS = ('female', 'male')  # label index -> name: Female = 0, Male = 1.

# XLA:CPU hands convolutions to YNNPACK by default, which trains these CNNs slower than Eigen
# (benchmarks/RESULTS.md, "XLA:CPU flags"): YNNPACK keeps the dots and reductions only. Set before
# JAX starts (XLA reads XLA_FLAGS once), and only on jaxlib releases known to have the flag: XLA
# aborts on an unknown one. A user's own setting of it wins; GENDER_JAX_CPU_DEFAULTS=0 sets none.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type='
                 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE')
_JAXLIB_WITH_THE_FLAG = ('0.10.',)


def _set_cpu_defaults():
  flags = os.environ.get('XLA_FLAGS', '')
  if (os.environ.get('GENDER_JAX_CPU_DEFAULTS', '1') == '0' or
      'xla_cpu_experimental_ynn_fusion_type' in flags):
    return
  try:
    jaxlib = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  if jaxlib.startswith(_JAXLIB_WITH_THE_FLAG):
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_XLA_FLAGS}'.strip()


_set_cpu_defaults()


class UserError(Exception):
  """A mistake in what the user asked for: command lines print its message as one line."""
