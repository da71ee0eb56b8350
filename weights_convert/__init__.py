"""Keras VGG16 h5 weights -> Flax params for gender_jax; run `python -m weights_convert --help`."""
