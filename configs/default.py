"""Shared defaults of every experiment (the fields live in gender_jax/base_config.py); the other
configs override a few fields."""
from gender_jax.base_config import get_config  # pylint: disable=unused-import  # As it is.
