"""Every config field and its default: the base of each experiment in configs/.

The package owns it, not configs/, so library code never imports configs/ and a run saved before
a field existed still loads (inference fills the field from here).
"""
import importlib.util
import os

import ml_collections


def get_config():
  """Returns the base config: the study's protocol on the CelebA gender faces."""
  config = ml_collections.ConfigDict()
  # 'custom' (from scratch); 'vgg16', 'vggface' or 'face_resnet' (pretrained, frozen unless
  # finetune_blocks says otherwise).
  config.model = 'custom'

  # Data. The face folder: {train,valid,test}/{male,female}/*.jpg or a flat {male,female}.
  config.data_dir = os.environ.get('GENDER_JAX_DATA', '../shared/data/celeba_gender')
  # Where the TFDS dataset is built once and reused (never inside data_dir, which may be read-only).
  config.tfds_dir = os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')
  config.num_train = 5000  # The study's protocol: a seeded, stratified subsample; -1 = all.
  config.num_valid = 750
  config.num_test = 750
  config.image_size = 224
  config.resize = 'stretch'  # 'stretch' the 89x109 faces to a square, or 'center_crop' them.
  config.augment_flip = True  # Random horizontal flips (exact under feature caching).
  config.augment_shift = 0.0  # Max random shift as a fraction of the size (images path only).
  # Random jitter of training images (images path only; 0 = off): zoom and width/height stretch
  # factors in [1 - x, 1 + x], rotation in degrees either way, and colour factors in [1 - x, 1 + x].
  config.augment_scale = 0.0
  config.augment_aspect = 0.0
  config.augment_rotate = 0.0
  config.augment_brightness = 0.0
  config.augment_contrast = 0.0
  config.augment_saturation = 0.0
  # Half the training images cut by up to these fractions at the left, top, right and bottom
  # edges, the cut's pixels repeated outwards: what alignment shows of a tightly cropped face.
  config.augment_frame = (0.0, 0.0, 0.0, 0.0)
  config.max_bad_fraction = 0.01  # Fail the dataset build if more images than this are bad.
  # Faces: 'none' resizes whole images; 'mtcnn' finds each face's 5 landmarks and aligns them
  # onto face_template (derived from the training faces when empty, then kept in the run's config).
  config.face_align = 'none'
  config.face_detector_weights = 'weights/mtcnn'  # `python -m weights_convert --source mtcnn`.
  config.face_template = ()  # 10 floats: (x, y) of 5 landmarks as fractions of the square.
  config.face_zoom = 1.0  # Scale of the derived template: > 1 fills more of the square with face.
  config.face_missing = 'resize'  # Images without a face: 'resize' them whole, or 'drop' them.

  # Model.
  config.weights = ''  # Folder written by `python -m weights_convert` (pretrained models).
  config.allow_random_base = False  # Run a pretrained model with a random base (testing only).
  config.compute_dtype = 'float32'  # 'bfloat16' on GPU/TPU: the base's convolutions.
  config.custom_channels = (32, 64, 128, 256)
  config.custom_convs_per_block = 1
  config.custom_norm = 'none'  # 'none', 'batch' or 'group': a norm after each convolution.
  # What face_resnet's head sees: 'descriptor', the 128-d face descriptor dlib compares
  # identities by, or 'pooled', the 256-d features averaged before the layer that makes it.
  config.face_resnet_features = 'descriptor'
  config.head_hidden = (256,)
  config.head_pooling = 'flatten'  # 'flatten' as in the study, or 'gap'.
  config.dropout_rate = 0.5
  config.head_input_dropout = 0.0  # Dropout on the pooled base features, before the head.

  # Training.
  config.batch_size = 64  # Global batch, split over all devices.
  config.num_epochs = 10
  config.optimizer = 'adam'
  config.learning_rate = 1e-4
  config.weight_decay = 0.0
  config.warmup_epochs = 0
  config.lr_schedule = 'constant'  # 'constant' or 'cosine'.
  config.finetune_blocks = ()  # Base blocks to fine-tune, e.g. ('block5',); the rest is frozen.
  config.finetune_learning_rate = 1e-5
  config.cache_features = True  # Run a frozen base once per split and train the head on features.
  config.seed = 0  # Draws the protocol: which images are in each split.
  config.train_seed = -1  # Initialises and orders training (and its jitter); -1: the seed above.
  config.eval_batch_size = 256  # Global; on CPU run in pieces that bound memory (sharded.py).
  return config


def load_get_config(path):
  """The get_config of a config file (configs/*.py), loaded by its path: configs/ is a folder of
  the checkout, as ml_collections' --config flag reads it, not an installed package."""
  spec = importlib.util.spec_from_file_location('gender_jax_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config
