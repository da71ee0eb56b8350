"""Frozen dlib face-recognition ResNet (face-api's weights), a dense head on its face descriptor.

  python -m weights_convert --source face_resnet --download --out weights/face_resnet
  python -m weights_convert --source mtcnn --download --out weights/mtcnn
  python -m gender_jax.main --config=configs/face_resnet.py --workdir=runs/face_resnet \
      --config.data_dir=../shared/data/celeba_gender

Chosen by validation accuracy and by balanced accuracy on ../shared/data/utkface_sample, never by
a test split; docs/results.md ("face_resnet: a face-recognition base, frozen") has every run.
- Faces aligned as dlib cut the network's training faces (face_resnet.CHIP_TEMPLATE): valid
  0.973-0.981 and UTKFace balanced accuracy 0.87-0.92 over every head, against 0.84-0.93 and
  0.73-0.79 on templates derived from CelebA's crops (zoom 0.8 to 1.6), where faces sit smaller
  and lower.
- The 128-d descriptor under a 256-unit hidden layer at learning rate 1e-2: valid 0.980-0.981,
  UTKFace 0.910-0.916 over three training seeds; a linear head (1e-3): 0.973-0.975 and
  0.907-0.912; the 256-d pooled features: UTKFace 0.87-0.90 under every head tried.
"""
from gender_jax import base_config
from gender_jax.models import face_resnet


def get_config():
  config = base_config.get_config()
  config.model = 'face_resnet'
  config.weights = 'weights/face_resnet'
  config.image_size = face_resnet.INPUT_SIZE  # 150 px: dlib's chips.
  config.face_align = 'mtcnn'
  config.face_template = face_resnet.CHIP_TEMPLATE
  config.resize = 'center_crop'  # Images where no face is found: a square keeps proportions.
  config.face_resnet_features = 'descriptor'
  config.head_hidden = (256,)

  # The head alone trains, on features computed once: epochs cost little.
  config.learning_rate = 1e-2
  config.num_epochs = 30
  config.lr_schedule = 'cosine'
  return config
