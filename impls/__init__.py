"""The built-in families, one folder each: problems, float64 oracle, same-dtype base, registration, variants.

This folder is loaded like any package of variants from outside the repository:
:func:`attnsuite.registry.load_builtin` hands it to :func:`attnsuite.registry.load_external`, which
imports it as the package ``attnsuite_impls`` (the name the wheel installs it under), and importing
it registers every family and variant below. A family folder imports only the core (``attnsuite``)
and its own modules, never another family (tests/test_layout.py pins the layout).

To add a family: a folder here whose ``__init__`` imports the module that registers the family
(``register_family``), then its variant modules; list it below and in pyproject.toml's packages.
"""

from . import attention, dilated, gqa, layers, mla  # noqa: F401
