"""Pretrained weights -> Flax params for gender_jax (Keras VGG16 h5 files, facenet-pytorch's
MTCNN); run `python -m weights_convert --help`."""
