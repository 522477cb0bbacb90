"""Command-line plumbing the tools share: torchreid's config arguments (``--config-file``,
``--root``, trailing ``KEY VALUE`` overrides) and a bad config reported by name."""
import argparse
import sys

from plugins.training.launch import setup_config

#: What reading a config raises for a bad file, key or value (each names what is wrong).
CONFIG_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError)


def add_config_arguments(parser, weights_help=None):
    """``--config-file``, ``--root``, ``--weights`` (required, when ``weights_help`` is given) and
    the trailing ``opts``; the tool's own arguments go before these."""
    parser.add_argument('--config-file', type=str, default='', help='path to config file')
    parser.add_argument('--root', type=str, default='', help='path to data root')
    if weights_help:
        parser.add_argument('--weights', type=str, required=True, help=weights_help)
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER,
                        help='config overrides: KEY VALUE pairs, last on the line')


def error_message(err):
    """An exception's own message (a ``KeyError``'s without the quotes ``str`` adds)."""
    return err.args[0] if err.args else str(err)


def config_or_exit(args, opts=None, **kwargs):
    """The config from the parsed arguments (``opts`` replaces ``args.opts``; ``kwargs`` go to
    :func:`~plugins.training.launch.setup_config`); a bad one ends the program with
    ``Config error: <what is wrong>``."""
    try:
        return setup_config(args.config_file, list(args.opts or []) if opts is None else opts,
                            root=args.root, **kwargs)
    except CONFIG_ERRORS as err:
        sys.exit('Config error: {}'.format(error_message(err)))
