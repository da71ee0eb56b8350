from setuptools import find_packages, setup

setup(
    name='gender_jax',
    version='0.1.0',
    description='Facial gender classification by transfer learning (Custom CNN, VGG16, VGGFace) '
                'in JAX/Flax.',
    python_requires='>=3.10',
    # configs/ is read by path (--config=configs/x.py), from a checkout: no top-level 'configs'
    # package that would collide with another project's.
    packages=find_packages(include=['gender_jax', 'gender_jax.*', 'weights_convert']),
    install_requires=[
        'jax>=0.7',
        'flax>=0.11',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'tensorflow-datasets>=4.9.9',
        'array_record',  # tfds' file format, read without TensorFlow.
        'importlib_resources',  # tfds 4.9.10 imports it on Python 3.11.
        'numpy',
        'h5py',
        'ml-collections',
        'absl-py',
        'pillow',
        'tqdm',
        'filelock',  # JAX's compilation cache bounds its size with it (else a warning per run).
        'matplotlib',
        'tensorboardX',  # TensorBoard event files without TensorFlow.
    ],
    extras_require={
        # Keras writes the reference h5 files the converter is tested against (JAX backend);
        # scikit-image ships the astronaut photo the face detector is tested on. The detector's
        # reference (torch, torchvision, facenet-pytorch) is installed by .ci/run: it needs a
        # CPU torch wheel and facenet-pytorch without its dependencies.
        'test': ['pytest', 'pytest-xdist', 'keras>=3.8', 'scikit-image'],
    },
)
