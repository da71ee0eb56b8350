"""Converts pretrained weights into a folder gender_jax loads: Keras VGG16 h5 weights (ImageNet
or VGGFace), facenet-pytorch's MTCNN face detector, or dlib's face-recognition ResNet from
face-api's npm package.

  python -m weights_convert --source vggface --download --out weights/vggface
  python -m weights_convert --source imagenet --h5 FILE --out weights/imagenet
  python -m weights_convert --source mtcnn --download --out weights/mtcnn
  python -m weights_convert --source mtcnn --wheel facenet_pytorch-2.6.0-py3-none-any.whl \\
      --out weights/mtcnn
  python -m weights_convert --source face_resnet --download --out weights/face_resnet
  python -m weights_convert --source face_resnet --tarball vladmandic-face-api-1.7.15.tgz \\
      --out weights/face_resnet
"""
from absl import app
from absl import flags

from gender_jax import cli
from gender_jax.models import pretrained
from gender_jax import UserError
from weights_convert import convert, download, face_resnet, mtcnn

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  # Hyphenated names, as README.md and the error messages spell them; FLAGS['pt-dir'] reads them.
  flags.DEFINE_enum('source', None,
                    sorted(pretrained.H5_URL_OF_SOURCE) + ['mtcnn', 'face_resnet'],
                    'What the weights were trained on (VGG16: sets the preprocessing), mtcnn '
                    "for the face detector, or face_resnet for dlib's face-recognition ResNet.")
  flags.DEFINE_string('h5', None, 'A Keras h5 file of VGG16 weights (notop or whole model).')
  flags.DEFINE_string('wheel', None, 'mtcnn: the facenet-pytorch wheel (pip download --no-deps '
                                     'facenet-pytorch==2.6.0).')
  flags.DEFINE_string('pt-dir', None, 'mtcnn: a folder with pnet.pt, rnet.pt and onet.pt, such as '
                                      "an installed facenet_pytorch's data/.")
  flags.DEFINE_string('tarball', None, "face_resnet: face-api's npm tarball (npm pack "
                                       '@vladmandic/face-api@1.7.15).')
  flags.DEFINE_string('model-dir', None, "face_resnet: face-api's model/ folder, holding "
                                         'face_recognition_model-weights_manifest.json and its '
                                         '.bin.')
  flags.DEFINE_bool('download', False, "Fetch the source's public file (notop h5, the "
                                       "facenet-pytorch wheel or face-api's npm tarball) into "
                                       '--cache-dir first.')
  flags.DEFINE_string('out', None, 'The folder to write (params/, metadata.json).')
  flags.DEFINE_bool('overwrite', False,
                    "Replace what --out holds even where it is not this source's weights (another "
                    "source's, or other files); without it, that is an error.")
  flags.DEFINE_string('sha256', None, "Pin the h5 file's (or wheel's, or tarball's) sha256; "
                                      'another one is an error.')
  flags.DEFINE_string('cache-dir', download.DEFAULT_CACHE_DIR, 'Where --download keeps the files.')
  flags.mark_flags_as_required(['source', 'out'])
  # Where the weights come from. Not mark_flags_as_mutual_exclusive: it counts values other than
  # None, so --nodownload would count as a choice, and its message names no fix.
  flags.register_multi_flags_validator(
      ['h5', 'wheel', 'pt-dir', 'tarball', 'model-dir', 'download'],
      lambda values: sum(map(bool, values.values())) == 1,
      'give exactly one of --h5 FILE, --wheel FILE, --pt-dir DIR, --tarball FILE, --model-dir DIR '
      'or --download.')


def _convert_vgg16():
  if FLAGS.wheel or FLAGS['pt-dir'].value:
    raise UserError(f'--{"wheel" if FLAGS.wheel else "pt-dir"} is for --source mtcnn; for '
                    f'{FLAGS.source} give --h5 FILE or --download.')
  cache_dir = FLAGS['cache-dir'].value
  h5 = download.fetch(FLAGS.source, cache_dir, FLAGS.sha256) if FLAGS.download else FLAGS.h5
  metadata = convert.convert(FLAGS.source, h5, FLAGS.out, FLAGS.sha256, FLAGS.overwrite)
  print(f'{metadata["h5_file"]}: layout {metadata["h5_layout"]}, sha256 {metadata["h5_sha256"]} '
        f'(pin it with --sha256)')
  print(f'skipped layers: {", ".join(metadata["skipped_layers"]) or "none"}')
  print(f'wrote {metadata["param_count"]:,} {metadata["source"]} params '
        f'({metadata["preprocessing"]} preprocessing) to {FLAGS.out}')


def _convert_mtcnn():
  if FLAGS.h5:
    raise UserError('--h5 is for the VGG16 sources; for --source mtcnn give --wheel FILE, '
                    '--pt-dir DIR or --download.')
  cache_dir = FLAGS['cache-dir'].value
  wheel = download.fetch('mtcnn', cache_dir, FLAGS.sha256) if FLAGS.download else FLAGS.wheel
  metadata = mtcnn.convert_mtcnn(FLAGS.out, wheel=wheel, pt_dir=FLAGS['pt-dir'].value,
                                sha256=FLAGS.sha256, overwrite=FLAGS.overwrite)
  if 'wheel_file' in metadata:
    print(f'{metadata["wheel_file"]}: sha256 {metadata["wheel_sha256"]}')
  for name, digest in metadata['pt_sha256'].items():
    print(f'{name}: sha256 {digest}')
  print(f'wrote {metadata["param_count"]:,} mtcnn params (pnet, rnet, onet) to {FLAGS.out}')


def _convert_face_resnet():
  cache_dir = FLAGS['cache-dir'].value
  tarball = (download.fetch('face_resnet', cache_dir, FLAGS.sha256) if FLAGS.download
             else FLAGS.tarball)
  metadata = face_resnet.convert_face_resnet(FLAGS.out, tarball=tarball,
                                             model_dir=FLAGS['model-dir'].value,
                                             sha256=FLAGS.sha256, overwrite=FLAGS.overwrite)
  if 'tarball_file' in metadata:
    print(f'{metadata["tarball_file"]}: sha256 {metadata["tarball_sha256"]}')
  for name, digest in metadata['file_sha256'].items():
    print(f'{name}: sha256 {digest}')
  print(f'wrote {metadata["param_count"]:,} face_resnet params to {FLAGS.out}')


# The flags that name a file, and the sources each is for; the flags each source takes.
_FILE_FLAGS = {'h5': 'the VGG16 sources', 'wheel': '--source mtcnn', 'pt-dir': '--source mtcnn',
               'tarball': '--source face_resnet', 'model-dir': '--source face_resnet'}
_FLAGS_OF_SOURCE = {'mtcnn': '--wheel FILE, --pt-dir DIR', 'face_resnet': '--tarball FILE, '
                                                                          '--model-dir DIR'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  given = next((f for f in _FILE_FLAGS if FLAGS[f].value), None)
  if given and ('face_resnet' in _FILE_FLAGS[given]) != (FLAGS.source == 'face_resnet'):
    raise UserError(f'--{given} is for {_FILE_FLAGS[given]}; for --source {FLAGS.source} give '
                    f'{_FLAGS_OF_SOURCE.get(FLAGS.source, "--h5 FILE")} or --download.')
  convert.check_out(FLAGS.out, FLAGS.source, FLAGS.overwrite)  # Before any download.
  converters = {'mtcnn': _convert_mtcnn, 'face_resnet': _convert_face_resnet}
  converters.get(FLAGS.source, _convert_vgg16)()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
