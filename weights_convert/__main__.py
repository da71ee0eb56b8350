"""Converts Keras VGG16 h5 weights (ImageNet or VGGFace) into a folder gender_jax loads.

  python -m weights_convert --source vggface --download --out weights/vggface
  python -m weights_convert --source imagenet --h5 FILE --out weights/vgg16_imagenet
"""
import argparse
import sys

from gender_jax import pretrained
from weights_convert import convert, download


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m weights_convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--source', required=True, choices=sorted(pretrained.H5_URL_OF_SOURCE),
                      help='What the weights were trained on; sets the preprocessing.')
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--h5', help='A Keras h5 file of VGG16 weights (notop or whole model).')
  where.add_argument('--download', action='store_true',
                     help="Fetch the source's public notop h5 into --cache-dir first.")
  parser.add_argument('--out', required=True, help='The folder to write (params/, metadata.json).')
  parser.add_argument('--sha256', help="Pin the h5 file's sha256; another one is an error.")
  parser.add_argument('--cache-dir', default=download.DEFAULT_CACHE_DIR,
                      help='Where --download keeps the files (default: %(default)s).')
  return parser.parse_args(argv)


def main(argv=None):
  """Runs the command line; returns the exit status (2 and one `error:` line on bad input)."""
  args = parse_args(argv)
  try:
    h5 = download.fetch(args.source, args.cache_dir, args.sha256) if args.download else args.h5
    metadata = convert.convert(args.source, h5, args.out, sha256=args.sha256)
  except convert.ConversionError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{metadata["h5_file"]}: layout {metadata["h5_layout"]}, sha256 {metadata["h5_sha256"]} '
        f'(pin it with --sha256)')
  print(f'skipped layers: {", ".join(metadata["skipped_layers"]) or "none"}')
  print(f'wrote {metadata["param_count"]:,} {metadata["source"]} params '
        f'({metadata["preprocessing"]} preprocessing) to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
