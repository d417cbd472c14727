"""The tests of examples/, which import its scripts by path, as ``python examples/X.py`` would."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_script(folder, *names):
    """The modules ``names`` of ``ROOT/folder``, each imported once, in this order.

    Each is registered under its own name, so that a later one finds its
    siblings as its ``import`` statements name them; what a script adds to
    ``sys.path`` is taken away again.
    """
    modules = []
    for name in names:
        path = os.path.join(ROOT, folder, name + '.py')
        module = sys.modules.get(name)
        if module is None or getattr(module, '__file__', None) != path:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            search_path = list(sys.path)
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path[:] = search_path
        modules.append(module)
    return modules[0] if len(modules) == 1 else modules
