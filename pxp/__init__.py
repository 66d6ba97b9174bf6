"""pxp: Pruning by eXplaining.

The package root stays torch-free so that the spec models and the error tree
can be imported by the gateway. Torch-side modules live in subpackages.
"""

__version__ = "0.1.0"
