"""One home per family (docs/design.md "Layout"): each folder of impls/ holds its families' problems,
oracle, base, registration and variants; the core never names a family; the built-ins load through
the same door as external code; no import circle; no top-level ``impls`` package is installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import partial
from pathlib import Path

import pytest

from attnsuite import registry

REPO = Path(__file__).resolve().parents[1]
IMPLS = REPO / "impls"
FOLDERS = sorted(p.name for p in IMPLS.iterdir() if (p / "__init__.py").is_file())
CORE_FILES = sorted((REPO / "attnsuite").rglob("*.py"))
FAMILY_FILES = sorted(IMPLS.rglob("*.py"))

# In a fresh interpreter: import every core module (nothing may register or import a family), then
# load each family folder on its own through load_external, under a name of its own, and record
# what it registered and which of the suite's modules it imported.
PROBE = r'''
import importlib, json, pkgutil, sys
from functools import partial
import attnsuite
from attnsuite import registry

# modules that are the start of a process of their own, never imported by a user's code: the
# command line, and the fork server CPU ranks start from, whose job is to load the variants once
ENTRY = ("attnsuite.__main__", "attnsuite.distributed.forkserver_preload")
core = sorted(m.name for m in pkgutil.walk_packages(attnsuite.__path__, "attnsuite.") if m.name not in ENTRY)
for name in core:
    importlib.import_module(name)
out = {"core": {"modules": core, "families": [f.name for f in registry.families()],
                "variants": [v.name for v in registry.variants()],
                "impls": sorted(m for m in sys.modules if m.split(".")[0] in ("impls", "attnsuite_impls"))},
       "folders": {}}

def where(fn):
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__module__", None)

for folder in sys.argv[2:]:
    before_f = {f.name for f in registry.families()}
    before_v, before_m = {v.name for v in registry.variants()}, set(sys.modules)
    probe = f"attnsuite_layout_probe_{folder}"
    try:
        registry.load_external(f"{sys.argv[1]}/{folder}", module_name=probe)
    except Exception as exc:  # reported by that folder's test alone
        out["folders"][folder] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    fams = {n: {part: where(getattr(registry.family(n), part)) for part in ("reference", "base", "problems", "params")
                if getattr(registry.family(n), part) is not None}
            for n in sorted({f.name for f in registry.families()} - before_f)}
    out["folders"][folder] = {
        "probe": probe, "families": fams,
        "variants": {n: [registry.get(n).family, type(registry.get(n)).__module__]
                     for n in sorted({v.name for v in registry.variants()} - before_v)},
        "suite_modules": sorted(m for m in set(sys.modules) - before_m
                                if m.split(".")[0].startswith(("attnsuite", "impls"))),
    }
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def probe() -> dict:
    """The probe's findings (one subprocess for the whole module: the imports must start clean)."""
    res = subprocess.run([sys.executable, "-c", PROBE, str(IMPLS), *FOLDERS], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _imports(nodes, module: str, is_pkg: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import among ``nodes`` of ``module`` (relative ones resolved)."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            out.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
    return out


def _all_imports(path: Path) -> list[tuple[int, str]]:
    """Every import of a file of attnsuite/ or impls/, module-level or not."""
    return _imports(ast.walk(ast.parse(path.read_text(encoding="utf-8"))), *_module_name(path))


def _defined_in(fn) -> str:
    """The module a family's function (possibly a functools.partial) is defined in."""
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__module__", "") or ""


def _module_name(path: Path) -> tuple[str, bool]:
    """The dotted name a file of attnsuite/ or impls/ imports as (impls/ is attnsuite_impls)."""
    rel = path.relative_to(REPO).with_suffix("").parts
    parts = ["attnsuite_impls" if rel[0] == "impls" else rel[0], *rel[1:]]
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


# --------------------------------------------------------------------------- (a) the core names no family

@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_core_module_never_imports_a_family(path):
    bad = [f"line {line}: {target}" for line, target in _all_imports(path)
           if target.split(".")[0] in ("impls", "attnsuite_impls")]
    text = path.read_text(encoding="utf-8")
    # a dynamic import by name is an import too (load_builtin once did import_module("impls"))
    bad += [f"imports {m!r} by name" for m in re.findall(r"""(?:import_module|__import__)\(\s*f?["']((?:attnsuite_)?impls\b[\w.]*)""", text)]
    assert not bad, f"{path.relative_to(REPO)} names a family module: {bad}"


def test_importing_every_core_module_registers_nothing_and_imports_no_family(probe):
    core = probe["core"]
    assert "attnsuite.registry" in core["modules"] and len(core["modules"]) > 30, core
    assert core["families"] == [] and core["variants"] == [], core
    assert core["impls"] == [], f"importing the core imported {core['impls']}"


def test_the_fork_servers_preload_module_loads_the_builtin_variants():
    # its whole job: a rank forked from the server has them (a start took 3.1 s instead of 0.16 s
    # when each rank loaded them itself; docs/distributed.md)
    from attnsuite.distributed import launch

    code = ("import json, sys; from attnsuite import registry; import " + launch.FORKSERVER_PRELOAD + "; "
            "print(json.dumps(sorted({str(registry.origin(v.name)) for v in registry.variants()})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert registry.BUILTIN_ORIGIN in json.loads(res.stdout), res.stdout


def test_load_builtin_hands_the_impls_folder_to_load_external(monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "load_external", lambda spec, module_name=None: calls.append((spec, module_name)))
    registry.load_builtin()
    assert calls == [(str(IMPLS), registry.BUILTIN_PACKAGE)]
    assert registry.BUILTIN_PACKAGE == "attnsuite_impls"


# --------------------------------------------------------------------------- (b) one folder per family

@pytest.mark.parametrize("folder", FOLDERS)
def test_a_family_folder_imports_only_the_core_and_itself(folder):
    bad = []
    for path in sorted((IMPLS / folder).rglob("*.py")):
        for line, target in _all_imports(path):
            top = target.split(".")[0]
            own = target.startswith(f"attnsuite_impls.{folder}.") or target == f"attnsuite_impls.{folder}"
            if top in ("impls", "attnsuite_impls") and not own:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bad, "a family folder imports another family:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_family_folder_loaded_alone_registers_its_families_with_their_variants(probe, folder):
    got = probe["folders"][folder]
    assert "error" not in got, f"impls/{folder} does not load on its own: {got.get('error')}"
    mine = got["probe"]
    assert got["families"], f"impls/{folder} registers no family"
    for family, parts in got["families"].items():
        for part, module in parts.items():
            assert module and module.startswith(mine + "."), f"family {family}: its {part} comes from {module}"
    for variant, (family, module) in got["variants"].items():
        assert family in got["families"], f"impls/{folder} registers {variant} of family {family}, which lives elsewhere"
        assert module.startswith(mine + "."), f"{variant} is defined in {module}"
    outside = [m for m in got["suite_modules"] if not (m == mine or m.startswith(mine + ".") or m.startswith("attnsuite."))]
    assert not outside, f"loading impls/{folder} alone imported {outside}"


def test_every_builtin_family_and_variant_has_exactly_one_folder(probe):
    registry.load_builtin()
    folders = probe["folders"].values()
    assert all("error" not in got for got in folders), probe["folders"]
    families = [f for got in folders for f in got["families"]]
    variants = [v for got in folders for v in got["variants"]]
    assert len(families) == len(set(families)), sorted(families)
    builtin = registry.BUILTIN_PACKAGE + "."
    builtin_v = {v.name for v in registry.variants() if type(v).__module__.startswith(builtin)}
    builtin_f = {f.name for f in registry.families() if _defined_in(f.reference).startswith(builtin)}
    assert set(variants) == builtin_v
    assert set(families) == builtin_f and len(builtin_f) >= 8


# --------------------------------------------------------------------------- no import circle

@pytest.mark.parametrize("scope", ["module-level", "any"])
def test_no_import_circle_among_the_suites_modules(scope):
    """Imports among attnsuite/ and impls/ form no cycle: neither the module-level ones nor all of them
    (a function-level import that only hides a circle from the interpreter counts as one)."""
    files = {_module_name(p): p for p in CORE_FILES + FAMILY_FILES}
    names = {name for name, _ in files}
    edges: dict[str, set[str]] = {}
    for (name, is_pkg), path in files.items():
        edges[name] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for _, target in _imports(tree.body if scope == "module-level" else ast.walk(tree), name, is_pkg):
            while target and target not in names:  # "pkg.mod.func" -> "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


# --------------------------------------------------------------------------- (c) what gets installed

def _package_folders(top: Path, name: str) -> set[str]:
    """Dotted names of ``top`` and every folder below it that has an ``__init__.py``, ``top`` as ``name``."""
    return {".".join([name, *init.parent.relative_to(top).parts]) for init in top.rglob("__init__.py")
            if "__pycache__" not in init.parts}


def test_pyproject_installs_impls_as_attnsuite_impls_with_every_folder_and_never_as_impls():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = conf["packages"]
    assert [p for p in packages if p.split(".")[0] == "impls"] == [], "a top-level 'impls' package would be installed"
    assert conf.get("package-dir") == {"attnsuite_impls": "impls"}
    want = _package_folders(IMPLS, "attnsuite_impls") | _package_folders(REPO / "attnsuite", "attnsuite")
    assert set(packages) == want, f"missing {sorted(want - set(packages))}, extra {sorted(set(packages) - want)}"


def test_a_wheel_holds_attnsuite_impls_not_impls_and_load_builtin_finds_it_there(tmp_path):
    src = tmp_path / "src"
    for name in ("attnsuite", "impls"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    assert "impls" not in tops and "attnsuite_impls" in tops, sorted(tops)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import attnsuite; from attnsuite import registry; registry.load_builtin(); "
            "print(attnsuite.__file__); print(registry.builtin_folder()); print(len(registry.variants()))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert res.returncode == 0, res.stderr[-3000:]
    where, folder, count = res.stdout.split()
    assert Path(where).is_relative_to(site) and Path(folder) == site / "attnsuite_impls"
    registry.load_builtin()
    assert int(count) == len([v for v in registry.variants() if type(v).__module__.startswith("attnsuite_impls.")])


# --------------------------------------------------------------------------- (d) the same door for outside code

def _readme_example() -> str:
    """The code block of README's "Adding a variant in this repository"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Adding a variant in this repository", 1)[1].split("\n### ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, restored afterwards, with the external modules a test imported forgotten."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("attnsuite_external_"):
            del sys.modules[name]


def _package(root: Path, name: str, modules: dict[str, str]) -> Path:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("".join(f"from . import {m}  # noqa: F401\n" for m in modules))
    for m, code in modules.items():
        (pkg / f"{m}.py").write_text(code)
    return pkg


def test_readme_variant_in_a_package_folder_of_its_own_is_checked_like_a_builtin(pytester, tmp_path, scratch_registry):
    pkg = _package(tmp_path, "my_variants", {"my_kernel": _readme_example()})
    registry.load_external(str(pkg))
    variant = registry.get("my-kernel")
    assert type(variant).__module__ == "attnsuite_external_my_variants.my_kernel"  # never a generic name
    assert variant.family == "attention" and variant.level == "kernel"
    registry.load_external(str(pkg))  # a second load is a no-op, not a duplicate registration
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"),
        "--rootdir", str(REPO), "-p", "no:cacheprovider", "-q",
        "--attn-variants", str(pkg), "--attn-only", "my-kernel", "-k", "fp32 and (q17 or q113)",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 8, result.stdout.str()[-3000:]
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]


def test_a_package_folder_that_fails_to_import_leaves_nothing_half_loaded(tmp_path, scratch_registry):
    good = ("from attnsuite.registry import KernelVariant, register\n\n@register\nclass Fine(KernelVariant):\n"
            "    name = 'fine-one'\n\n    def build(self, problem):\n        return None\n")
    pkg = _package(tmp_path, "half", {"fine": good, "broken": "raise RuntimeError('broken on purpose')\n"})
    with pytest.raises(RuntimeError, match="broken on purpose"):
        registry.load_external(str(pkg))
    assert [m for m in sys.modules if m.startswith("attnsuite_external_half")] == []
    (pkg / "broken.py").write_text("")
    registry.load_external(str(pkg))  # fixed: the retry imports the whole package
    assert type(registry.get("fine-one")).__module__ == "attnsuite_external_half.fine"


def test_a_folder_without_init_is_a_clear_error(tmp_path):
    (tmp_path / "loose").mkdir()
    with pytest.raises(FileNotFoundError, match="loose.*has no __init__.py"):
        registry.load_external(str(tmp_path / "loose"))
