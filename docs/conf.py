"""Sphinx configuration of the percpu documentation.

`tox -e docs` builds it against the installed package: the API reference is
generated from the docstrings and signatures of what is installed, and
`sphinx-build -b doctest` runs every example.
"""
import ast
import copy
import importlib
import re
from pathlib import Path

import percpu

DOCS = Path(__file__).resolve().parent
EXAMPLES = DOCS / "examples"
REPORTS = DOCS.parent / "reports"

project = "percpu"
author = "the percpu authors"
copyright = "2026, the percpu authors"
release = percpu.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
]

exclude_patterns = ["_build", "examples"]
templates_path = ["_templates"]

# The API reference: one page per public name, from the docstrings. The
# extension modules embed their signatures in the docstrings
# (embedsignature=True), which autodoc reads.
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {
    "members": True,
    "inherited-members": True,
}
autodoc_docstring_signature = True


def _compiled_classes():
    """Public names of the classes defined in the extension modules: their
    docstrings carry no constructor signature, so the class template gives
    autodoc an empty one, which _stub_signature below fills from the stub."""
    names = set()
    for modname in ("percpu", "percpu.counters", "percpu.refs", "percpu.alloc"):
        module = importlib.import_module(modname)
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and obj.__module__.startswith("percpu._"):
                names.add(f"{modname}.{name}")
    return sorted(names)


autosummary_context = {"compiled_classes": _compiled_classes()}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
add_module_names = False

# Every example in the pages is a doctest (`>>>` blocks and testcode).
doctest_global_setup = f"""
from pathlib import Path
import percpu
EXAMPLES = Path({str(EXAMPLES)!r})
REPORTS = Path({str(REPORTS)!r})
"""
doctest_test_doctest_blocks = "default"
trim_doctest_flags = True

html_theme = "alabaster"
html_theme_options = {
    "description": "Per-CPU counters and reference counts for Python",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
html_show_sourcelink = False


# Signatures of the compiled modules. Cython embeds untyped signatures in the
# docstrings ("add(self, n)"); the type stubs beside the extension modules
# carry the typed ones that mypy checks. The reference shows the stub's
# parameters and annotations, with the defaults that Cython embedded where
# the stub writes "...".
_stubs: dict = {}


def _stub_index(modname):
    """{"functions": {name: node}, "classes": {name: (bases, {name: node})}}
    of the module's .pyi, or None when it has none."""
    if modname not in _stubs:
        index = None
        try:
            module = importlib.import_module(modname)
            path = Path(module.__file__)
        except (ImportError, AttributeError, TypeError):
            path = None
        if path is not None and path.suffix in (".so", ".pyd"):
            stub = path.with_name(modname.rpartition(".")[2] + ".pyi")
            if stub.exists():
                tree = ast.parse(stub.read_text())
                index = {"functions": {}, "classes": {}}
                for node in tree.body:
                    if isinstance(node, ast.FunctionDef):
                        index["functions"][node.name] = node
                    elif isinstance(node, ast.ClassDef):
                        methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
                        bases = [ast.unparse(b) for b in node.bases]
                        index["classes"][node.name] = (bases, methods)
        _stubs[modname] = index
    return _stubs[modname]


def _stub_method(index, cls, name):
    seen = set()
    todo = [cls]
    while todo:
        c = todo.pop(0)
        if c in seen or c not in index["classes"]:
            continue
        seen.add(c)
        bases, methods = index["classes"][c]
        if name in methods:
            return methods[name]
        todo.extend(bases)
    return None


def _embedded_defaults(signature):
    """{name: default} from a signature Cython embedded ("(PerCPUPool pool=None)")."""
    out = {}
    for part in (signature or "").strip("()").split(","):
        left, eq, default = part.partition("=")
        words = left.split()
        if eq and words:
            out[words[-1].lstrip("*")] = default.strip()
    return out


def _stub_signature(app, what, name, obj, options, signature, return_annotation):
    if what not in ("class", "function", "method"):
        return None
    if what == "class" and signature is None:
        # autosummary's tables ask too; Sphinx 9 cannot take a signature for
        # an object it found none for, so the tables show the class bare.
        return None
    holder = obj if what == "class" else getattr(obj, "__objclass__", None)
    modname = getattr(holder if holder is not None else obj, "__module__", None)
    if not modname or not modname.startswith("percpu._"):
        return None
    index = _stub_index(modname)
    if index is None:
        return None
    if what == "class":
        node = _stub_method(index, obj.__name__, "__init__")
    else:
        qualname = getattr(obj, "__qualname__", "")
        cls, _, func = qualname.rpartition(".")
        node = _stub_method(index, cls, func) if cls else index["functions"].get(func)
    if node is None:
        return None
    args = copy.deepcopy(node.args)
    if what != "function" or "." in getattr(obj, "__qualname__", ""):
        (args.posonlyargs or args.args).pop(0)  # self
    defaults = _embedded_defaults(signature)
    params = args.posonlyargs + args.args
    for param, default in zip(params[len(params) - len(args.defaults):], args.defaults):
        if isinstance(default, ast.Constant) and default.value is Ellipsis and param.arg in defaults:
            default.value = ast.literal_eval(defaults[param.arg]) if defaults[param.arg] in (
                "None", "True", "False") or re.fullmatch(r"-?\d+", defaults[param.arg]) else Ellipsis
    for param, default in zip(args.kwonlyargs, args.kw_defaults):
        if isinstance(default, ast.Constant) and default.value is Ellipsis and param.arg in defaults:
            default.value = ast.literal_eval(defaults[param.arg])
    returns = None
    if what != "class" and node.returns is not None:
        returns = ast.unparse(node.returns)
    return f"({ast.unparse(args)})", returns


def _strip_embedded_signature(app, what, name, obj, options, lines):
    # Cython writes "Class.name: type" as a property's first docstring line,
    # and "Class(args)" as a class's when autodoc was given the signature.
    embedded = None
    if what in ("property", "attribute"):
        embedded = r"[\w.]+: .+"
    elif what == "class" and getattr(obj, "__module__", "").startswith("percpu._"):
        embedded = re.escape(obj.__name__) + r"\(.*\)"
    if embedded and lines and re.fullmatch(embedded, lines[0]):
        del lines[0]
        while lines and not lines[0].strip():
            del lines[0]


def _dataclass_defaults(app, what, name, obj, options, signature, return_annotation):
    # A dataclass's generated __init__ shows "<factory>" for default_factory
    # fields, which no reader can use: show what the factory makes.
    import dataclasses

    if what != "class" or not signature or "<factory>" not in signature:
        return None
    if not dataclasses.is_dataclass(obj):
        return None
    for f in dataclasses.fields(obj):
        if f.default_factory is not dataclasses.MISSING:
            signature = signature.replace("<factory>", repr(f.default_factory()), 1)
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _stub_signature)
    app.connect("autodoc-process-signature", _dataclass_defaults)
    app.connect("autodoc-process-docstring", _strip_embedded_signature)
