"""Converts pretrained weights into a folder gender_jax loads: Keras VGG16 h5 weights (ImageNet
or VGGFace), or facenet-pytorch's MTCNN face detector.

  python -m weights_convert --source vggface --download --out weights/vggface
  python -m weights_convert --source imagenet --h5 FILE --out weights/imagenet
  python -m weights_convert --source mtcnn --download --out weights/mtcnn
  python -m weights_convert --source mtcnn --wheel facenet_pytorch-2.6.0-py3-none-any.whl \\
      --out weights/mtcnn
"""
from absl import app
from absl import flags

from gender_jax import cli
from gender_jax.models import pretrained
from gender_jax import UserError
from weights_convert import convert, download, mtcnn

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  # Hyphenated names, as README.md and the error messages spell them; FLAGS['pt-dir'] reads them.
  flags.DEFINE_enum('source', None, sorted(pretrained.H5_URL_OF_SOURCE) + ['mtcnn'],
                    'What the weights were trained on (VGG16: sets the preprocessing), or mtcnn '
                    'for the face detector.')
  flags.DEFINE_string('h5', None, 'A Keras h5 file of VGG16 weights (notop or whole model).')
  flags.DEFINE_string('wheel', None, 'mtcnn: the facenet-pytorch wheel (pip download --no-deps '
                                     'facenet-pytorch==2.6.0).')
  flags.DEFINE_string('pt-dir', None, 'mtcnn: a folder with pnet.pt, rnet.pt and onet.pt, such as '
                                      "an installed facenet_pytorch's data/.")
  flags.DEFINE_bool('download', False, "Fetch the source's public file (notop h5, or the "
                                       'facenet-pytorch wheel) into --cache-dir first.')
  flags.DEFINE_string('out', None, 'The folder to write (params/, metadata.json).')
  flags.DEFINE_bool('overwrite', False,
                    "Replace what --out holds even where it is not this source's weights (another "
                    "source's, or other files); without it, that is an error.")
  flags.DEFINE_string('sha256', None, "Pin the h5 file's (or wheel's) sha256; another one is an "
                                      'error.')
  flags.DEFINE_string('cache-dir', download.DEFAULT_CACHE_DIR, 'Where --download keeps the files.')
  flags.mark_flags_as_required(['source', 'out'])
  # Where the weights come from. Not mark_flags_as_mutual_exclusive: it counts values other than
  # None, so --nodownload would count as a choice, and its message names no fix.
  flags.register_multi_flags_validator(
      ['h5', 'wheel', 'pt-dir', 'download'], lambda values: sum(map(bool, values.values())) == 1,
      'give exactly one of --h5 FILE, --wheel FILE, --pt-dir DIR or --download.')


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  convert.check_out(FLAGS.out, FLAGS.source, FLAGS.overwrite)  # Before any download.
  (_convert_mtcnn if FLAGS.source == 'mtcnn' else _convert_vgg16)()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
