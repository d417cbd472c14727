"""Sphinx configuration of the documentation site: ``bash scripts/docs.sh`` builds it.

The Markdown pages beside this file are the source (myst-parser); ``api.rst`` is
the API reference, generated from the docstrings by autodoc. Nothing is fetched
at build time: there is no intersphinx, and names from Chainer, NumPy or CuPy
stay plain text.
"""

import importlib
import inspect
import os
import sys

import chainer
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# autodoc documents the source tree beside this file, whatever else is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

import chainer_sharedlinear  # noqa: E402

project = 'chainer-sharedlinear'
author = 'the chainer-sharedlinear authors'
copyright = '2026, ' + author
release = version = chainer_sharedlinear.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'README.md']

# The pages link to each other's sections by their headings.
myst_heading_anchors = 3

autodoc_member_order = 'bysource'
# A method without a docstring of its own (forward, backward, ...) would show
# Chainer's, which describes Chainer's base class and cites its pages.
autodoc_inherit_docstrings = False

# Every cross-reference must resolve, but for the names of other projects (Chainer, NumPy,
# CuPy, ONNX, the standard library): their inventories would be fetched over the network,
# which the build must not need. The family's base class is private; "Bases:" still names it.
nitpicky = True
nitpick_ignore_regex = [
    ('py:.*', r'(chainer|numpy|cupy|onnx|onnx_chainer|fractions|json)(\..*)?'),
    ('py:class', r'chainer_sharedlinear\.links\.virtual_linear\.VirtualLinear'),
    ('py:class', 'file-like'),
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'furo'
html_title = '{} {}'.format(project, release)


class PublicApi(SphinxDirective):
    """``.. public-api:: module``: the module's docstring and every name in its ``__all__``.

    A name that the package's top level also exports is documented in full there,
    and here as an alias that links to it, so that every public path has its
    own entry (in the index and the object inventory) and nothing is described
    twice. Names are read at build time, so a name added to ``__all__`` needs no
    change to the pages.
    """

    required_arguments = 1

    def run(self):
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        top_name = module_name.split('.')[0]
        top = importlib.import_module(top_name)
        lines = ['.. automodule:: ' + module_name, '']
        for name in module.__all__:
            obj = getattr(module, name)
            if module is not top and name in top.__all__ and getattr(top, name) is obj:
                lines += _alias(module_name, name, obj, top_name)
            else:
                lines += _full_entry(module_name, name, obj)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(
            self.state, StringList(lines, source=module_name), container)
        return container.children


def _kind(obj):
    if inspect.isclass(obj):
        return 'class'
    if callable(obj):
        return 'function'
    return 'data'


def _full_entry(module_name, name, obj):
    kind = _kind(obj)
    lines = ['.. auto{}:: {}.{}'.format(kind, module_name, name)]
    if kind == 'class':
        lines += ['   :members:', '   :show-inheritance:']
        if issubclass(obj, chainer.Link):
            # What a link of the family inherits from the family's base (to_linear,
            # in_size, add_hook) is part of its API; what it inherits from Chainer's
            # Link (or Chain, Classifier) is Chainer's, documented there.
            lines += ['   :inherited-members: Classifier, Chain, Link, DeviceResident, object',
                      '   :exclude-members: printable_specs']
    return lines + ['']


def _alias(module_name, name, obj, top_name):
    kind = _kind(obj)
    role = {'class': 'class', 'function': 'func', 'data': 'data'}[kind]
    signature = name
    if kind != 'data':
        try:
            signature += str(_without_annotations(inspect.signature(obj)))
        except (TypeError, ValueError):
            pass
    return [
        '.. py:{}:: {}'.format(kind, signature),
        '   :module: ' + module_name,
        '',
        '   The same object as :{}:`{}.{}`.'.format(role, top_name, name),
        '',
    ]


def _without_annotations(signature):
    # The full entry shows the types; an alias shows the call. (Python 3.8 would also
    # write Optional[int] as Union[int, NoneType], a name Sphinx 7.1 cannot resolve.)
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty)


def setup(app):
    app.add_directive('public-api', PublicApi)
    return {'parallel_read_safe': True}
