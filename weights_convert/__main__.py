"""Converts pretrained weights into a folder gender_jax loads: Keras VGG16 h5 weights (ImageNet
or VGGFace), or facenet-pytorch's MTCNN face detector.

  python -m weights_convert --source vggface --download --out weights/vggface
  python -m weights_convert --source imagenet --h5 FILE --out weights/imagenet
  python -m weights_convert --source mtcnn --download --out weights/mtcnn
  python -m weights_convert --source mtcnn --wheel facenet_pytorch-2.6.0-py3-none-any.whl \\
      --out weights/mtcnn
"""
import argparse
import sys

from gender_jax import cli
from gender_jax import pretrained
from weights_convert import convert, download, mtcnn


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m weights_convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--source', required=True,
                      choices=sorted(pretrained.H5_URL_OF_SOURCE) + ['mtcnn'],
                      help='What the weights were trained on (VGG16: sets the preprocessing), '
                           'or mtcnn for the face detector.')
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--h5', help='A Keras h5 file of VGG16 weights (notop or whole model).')
  where.add_argument('--wheel', help='mtcnn: the facenet-pytorch wheel (pip download --no-deps '
                                     'facenet-pytorch==2.6.0).')
  where.add_argument('--pt-dir', help='mtcnn: a folder with pnet.pt, rnet.pt and onet.pt, such as '
                                      "an installed facenet_pytorch's data/.")
  where.add_argument('--download', action='store_true',
                     help="Fetch the source's public file (notop h5, or the facenet-pytorch "
                          'wheel) into --cache-dir first.')
  parser.add_argument('--out', required=True, help='The folder to write (params/, metadata.json).')
  parser.add_argument('--overwrite', action='store_true',
                      help="Replace what --out holds even where it is not this source's weights "
                           "(another source's, or other files); without it, that is an error.")
  parser.add_argument('--sha256', help="Pin the h5 file's (or wheel's) sha256; another one is an "
                                       'error.')
  parser.add_argument('--cache-dir', default=download.DEFAULT_CACHE_DIR,
                      help='Where --download keeps the files (default: %(default)s).')
  return parser.parse_args(argv)


def _convert_vgg16(args):
  if args.wheel or args.pt_dir:
    raise convert.ConversionError(f'--{"wheel" if args.wheel else "pt-dir"} is for --source '
                                  f'mtcnn; for {args.source} give --h5 FILE or --download.')
  h5 = download.fetch(args.source, args.cache_dir, args.sha256) if args.download else args.h5
  metadata = convert.convert(args.source, h5, args.out, args.sha256, args.overwrite)
  print(f'{metadata["h5_file"]}: layout {metadata["h5_layout"]}, sha256 {metadata["h5_sha256"]} '
        f'(pin it with --sha256)')
  print(f'skipped layers: {", ".join(metadata["skipped_layers"]) or "none"}')
  print(f'wrote {metadata["param_count"]:,} {metadata["source"]} params '
        f'({metadata["preprocessing"]} preprocessing) to {args.out}')


def _convert_mtcnn(args):
  if args.h5:
    raise convert.ConversionError('--h5 is for the VGG16 sources; for --source mtcnn give '
                                  '--wheel FILE, --pt-dir DIR or --download.')
  wheel = download.fetch('mtcnn', args.cache_dir, args.sha256) if args.download else args.wheel
  metadata = mtcnn.convert_mtcnn(args.out, wheel=wheel, pt_dir=args.pt_dir, sha256=args.sha256,
                                overwrite=args.overwrite)
  if 'wheel_file' in metadata:
    print(f'{metadata["wheel_file"]}: sha256 {metadata["wheel_sha256"]}')
  for name, digest in metadata['pt_sha256'].items():
    print(f'{name}: sha256 {digest}')
  print(f'wrote {metadata["param_count"]:,} mtcnn params (pnet, rnet, onet) to {args.out}')


def main(argv=None):
  """Runs the command line; returns the exit status (2 and one `error:` line on bad input)."""
  args = parse_args(argv)
  try:
    convert.check_out(args.out, args.source, args.overwrite)  # Before any download.
    (_convert_mtcnn if args.source == 'mtcnn' else _convert_vgg16)(args)
  except convert.ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # A missing or read-only path, a full disk: one line, as gender_jax's.
    fault = cli.environment_fault(e)
    if fault is None:
      raise
    print(f'error: {fault}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
