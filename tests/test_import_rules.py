"""The architecture, enforced: who imports whom, where private Helion names live, what the Modal digest covers.

Static rules parse every module under ``helion_remote/`` with ``ast`` (imports
at module level and inside functions, absolute and relative, and
``importlib.import_module("...")`` literals; ``if TYPE_CHECKING:`` blocks are
skipped: they never run).  Runtime rules import the real modules in a fresh
interpreter and read ``sys.modules``.  The tables below are the rules.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "helion_remote"

# ----------------------------------------------------------------------------- the rules
# A pattern ending in ``.*`` is a package and everything under it; any other is one module.

COORDINATOR_TARGET = (
    "helion_remote.target.emulate",
    "helion_remote.target.patches",
    "helion_remote.target.drift",
    "helion_remote.target.validate",
)
"""Target emulation and the drift check: the coordinator's half of ``helion_remote.target``."""

WORKER_SIDE = (
    "helion_remote.worker.*",
    "helion_remote.target",
    "helion_remote.target.profile",
    "helion_remote.target.active",
    "helion_remote.target.space",
    "helion_remote.target.capture",
    "helion_remote.target.probe_kernels",
)
"""Code that runs in a worker process or container."""

SHARED_ROOT = tuple(
    f"helion_remote.{name}"
    for name in ("protocol", "executor", "errors", "blobs", "argcodec", "environ", "_versions", "kernel_copy",
                 "result_stream", "spread")
)
"""Types and helpers every side uses: they depend on no side."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Modules matching ``modules`` (less ``exempt``) may not import a module matching ``forbidden``."""

    name: str
    modules: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("worker code imports no coordinator code", WORKER_SIDE, ("helion_remote.coordinator.*", *COORDINATOR_TARGET)),
    Rule("backends import no coordinator code", ("helion_remote.backends.*",), ("helion_remote.coordinator.*",)),
    Rule("only the Modal (and Ray) backends import modal or ray", ("helion_remote.*",), ("modal.*", "ray.*"),
         exempt=("helion_remote.backends.modal.*", "helion_remote.backends.ray.*")),
    Rule("shared root modules import no coordinator, worker, target or backend code", SHARED_ROOT,
         ("helion_remote.coordinator.*", "helion_remote.worker.*", "helion_remote.target.*", "helion_remote.backends.*")),
)

WORKER_ENTRY_MODULES = ("helion_remote.worker.runtime", "helion_remote.worker.process", "helion_remote.backends.modal.worker")
NOT_IN_A_WORKER_PROCESS = ("helion_remote.coordinator.*", *COORDINATOR_TARGET)

CORE_ENTRY_MODULES = ("helion_remote", "helion_remote.coordinator.api", "helion_remote.cli")
NOT_IN_THE_CORE = ("modal.*", "ray.*")

COMPAT_MODULES: tuple[str, ...] = (
    "helion_remote.coordinator._helion_compat",
    "helion_remote.worker._helion_worker_compat",
    "helion_remote.target.patches",
)
"""The only modules that may name private Helion names; each lists them in ``PRIVATE_NAMES``."""

NAMEDTUPLE_API = frozenset({"_replace", "_fields", "_asdict", "_make", "_field_defaults"})
"""Underscored by design (no clash with field names), public API."""


# ------------------------------------------------------------------------------- scanning


def matches(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        base = pattern[:-2]
        return name == base or name.startswith(base + ".")
    return name == pattern


def module_name(path: Path, top: Path = ROOT) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {module_name(p, package_dir.parent): p for p in sorted(package_dir.rglob("*.py"))
            if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run (``ast.walk`` less ``if TYPE_CHECKING:`` bodies)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imports(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, module) for each import; ``from m import x`` gives ``m`` and ``m.x`` (x may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def rule_violations(rule: Rule, package_dir: Path = PACKAGE_DIR) -> list[str]:
    out = []
    for name, path in all_modules(package_dir).items():
        if not any(matches(name, p) for p in rule.modules) or any(matches(name, p) for p in rule.exempt):
            continue
        for line, imported in imports(path, name):
            if any(matches(imported, p) for p in rule.forbidden):
                out.append(f"{path.relative_to(package_dir.parent)}:{line} imports {imported}")
    return sorted(set(out))


# ------------------------------------------------------------------------- (a) static rules


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_static_import_rule(rule: Rule) -> None:
    assert rule_violations(rule) == [], rule.name


def test_every_rule_applies_to_some_module() -> None:
    """A renamed package must not turn a rule into one that checks nothing."""
    names = list(all_modules())
    for rule in RULES:
        assert any(matches(n, p) for n in names for p in rule.modules), rule.name
    for pattern in (*WORKER_SIDE, *COORDINATOR_TARGET, *SHARED_ROOT, *COMPAT_MODULES):
        assert any(matches(n, pattern) for n in names), pattern


def test_rule_checker_catches_each_kind_of_import(tmp_path: Path) -> None:
    """The scanner sees relative, function-level and ``import_module`` imports, and skips TYPE_CHECKING."""
    package = tmp_path / "helion_remote"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    worker_rule, _, modal_rule, shared_rule = RULES
    bad = package / "worker" / "bad.py"
    for text, rule in (
        ("from ..coordinator import api\n", worker_rule),
        ("def f():\n    from helion_remote.target.emulate import emulate_target\n", worker_rule),
        ("import importlib\nimportlib.import_module('helion_remote.target.patches')\n", worker_rule),
        ("def f():\n    import modal\n", modal_rule),
    ):
        bad.write_text(text)
        assert [v for v in rule_violations(rule, package) if "worker/bad.py" in v], text
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from helion_remote.coordinator import api\n")
    assert rule_violations(worker_rule, package) == []
    bad.unlink()
    (package / "spread.py").write_text((package / "spread.py").read_text() + "\nfrom . import worker\n")
    assert any("spread.py" in v for v in rule_violations(shared_rule, package))


# ------------------------------------------------------------------------ (b) runtime rules

_SYS_MODULES = textwrap.dedent(
    """
    import json, sys, types
    modules, stub_root = json.loads(sys.argv[1]), sys.argv[2]
    if stub_root:  # import helion_remote's subpackages without running helion_remote/__init__.py
        package = types.ModuleType("helion_remote")
        package.__path__ = [stub_root]
        sys.modules["helion_remote"] = package
    import importlib
    for name in modules:
        importlib.import_module(name)
    if "helion_remote.cli" in modules:
        sys.modules["helion_remote.cli"].build_parser()
    print(json.dumps(sorted(sys.modules)))
    """
)


def loaded_modules(modules: tuple[str, ...], *, skip_root_init: bool = False) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _SYS_MODULES, json.dumps(modules), str(PACKAGE_DIR) if skip_root_init else ""],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_worker_process_loads_no_coordinator_code() -> None:
    """What the worker's own modules pull in (``helion_remote/__init__.py`` is measured below)."""
    loaded = loaded_modules(WORKER_ENTRY_MODULES, skip_root_init=True)
    assert set(WORKER_ENTRY_MODULES) <= set(loaded)
    assert [m for m in loaded if any(matches(m, p) for p in NOT_IN_A_WORKER_PROCESS)] == []


def test_a_worker_process_loads_no_coordinator_code_through_the_package() -> None:
    loaded = loaded_modules(WORKER_ENTRY_MODULES)
    assert [m for m in loaded if any(matches(m, p) for p in NOT_IN_A_WORKER_PROCESS)] == []


def test_the_core_and_the_cli_parser_load_no_backend_sdk() -> None:
    loaded = loaded_modules(CORE_ENTRY_MODULES)
    assert set(CORE_ENTRY_MODULES) <= set(loaded)
    assert [m for m in loaded if any(matches(m, p) for p in NOT_IN_THE_CORE)] == []


# ------------------------------------------------------------- (c) private Helion names


def _defined_private_names(paths: list[Path], *, self_only: bool) -> set[str]:
    """``_x`` names a codebase defines: functions, classes, module/class assignments, ``self._x =``."""
    names: set[str] = set()
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if not self_only or (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


_HELION_PRIVATE_DEFINITION = re.compile(
    r"(?:\bdef|\bclass)\s+(_\w+)"  # def _x / class _X
    r"|\b(?:self|cls)\.(_\w+)\s*(?::[^=\n]*)?=(?!=)"  # self._x = / self._x: T =
    r"|^[ \t]*(_\w+)\s*(?::[^=\n]*)?=(?!=)",  # module or class level _x =
    re.MULTILINE,
)
"""A text scan of Helion's ~600 files (an ``ast`` parse of them takes ~20 s); over-approximating is safe."""


@pytest.fixture(scope="module")
def helion_private_names() -> frozenset[str]:
    """Private names Helion defines that helion_remote does not define itself (those are ours)."""
    import helion

    theirs = set()
    for path in Path(helion.__file__).parent.rglob("*.py"):
        for match in _HELION_PRIVATE_DEFINITION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            theirs.add(next(g for g in match.groups() if g))
    ours = _defined_private_names(sorted(all_modules().values()), self_only=True)
    return frozenset(n for n in theirs - ours - NAMEDTUPLE_API if not n.startswith("__"))


@pytest.fixture(scope="module")
def declared() -> dict[str, tuple[str, ...]]:
    return {name: tuple(importlib.import_module(name).PRIVATE_NAMES) for name in COMPAT_MODULES}


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split(".")[1:])


def private_name_violations(path: Path, name: str, helion_private: frozenset[str],
                            declared: dict[str, tuple[str, ...]]) -> list[str]:
    """Private Helion names in a non-compat module, except a declared name read through its compat module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    compat_alias: dict[str, str] = {}  # local name -> compat module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in declared:
                    compat_alias[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in declared and alias.asname:
                    compat_alias[alias.asname] = alias.name

    def allowed(owner: str | None, attribute: str) -> bool:
        return owner is not None and any(d.rsplit(".", 1)[-1] == attribute for d in declared[owner])

    out = []
    where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            out += [f"{where}:{line} import {a.name}" for a in node.names if matches(a.name, "helion.*") and _private(a.name)]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if matches(node.module, "helion.*"):
                out += [f"{where}:{line} from {node.module} import {a.name}" for a in node.names
                        if _private(f"{node.module}.{a.name}")]
            elif node.module in declared:
                out += [f"{where}:{line} from {node.module} import {a.name} (not in its PRIVATE_NAMES)"
                        for a in node.names if a.name in helion_private and not allowed(node.module, a.name)]
        elif isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "helion" and _private(".".join(["helion", *reversed(chain)])):
                out.append(f"{where}:{line} helion.{'.'.join(reversed(chain))}")
            elif node.attr in helion_private:
                receiver = node.value.id if isinstance(node.value, ast.Name) else None
                if receiver in ("self", "cls"):  # a subclass of a Helion class using what it inherits
                    ok = any(allowed(owner, node.attr) for owner in declared)
                else:
                    ok = allowed(compat_alias.get(receiver or ""), node.attr)
                if not ok:
                    out.append(f"{where}:{line} ._{node.attr.lstrip('_')} (private in Helion)")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in helion_private):
            out.append(f"{where}:{line} {node.func.id}(..., {node.args[1].value!r}) (private in Helion)")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and matches(node.value, "helion.*") and node.value.replace(".", "").replace("_", "").isalnum()
              and _private(node.value)):
            out.append(f"{where}:{line} {node.value!r} (a private Helion path)")
    return out


def test_private_helion_names_appear_only_in_compat_modules(helion_private_names: frozenset[str],
                                                            declared: dict[str, tuple[str, ...]]) -> None:
    found = []
    for name, path in all_modules().items():
        if name not in declared:
            found += private_name_violations(path, name, helion_private_names, declared)
    assert found == [], "move these into a compat module's PRIVATE_NAMES:\n" + "\n".join(found)


def test_the_private_name_scan_catches_each_form(helion_private_names: frozenset[str],
                                                 declared: dict[str, tuple[str, ...]], tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    for text in (
        "from helion import _compat\n",
        "import helion._compat\n",
        "from helion._hardware import HardwareInfo\n",
        "from helion.autotuner.benchmark_provider import _unset_fn\n",
        "import helion\nhelion._compat.is_hip()\n",
        "def f(spec):\n    return spec._flat_fields()\n",
        "def f(field):\n    return getattr(field, '_data', None)\n",
        "MODULES = ('helion._compat',)\n",
        # a compat module may hand out only what it declares
        "from helion_remote.coordinator import _helion_compat as compat\ncompat._flat_fields\n",
        "from helion_remote.coordinator._helion_compat import _load_compiled_fn\n",
        # an inherited private method: through self only when declared, never on another object
        "class P:\n    def f(self):\n        self._decide_num_jobs()\n",
        "def f(provider, config):\n    provider._record_compile_failure(config)\n",
    ):
        probe.write_text(text)
        assert private_name_violations(probe, "m", helion_private_names, declared), text
    probe.write_text("from helion_remote.worker import _helion_worker_compat as hc\nhc._load_compiled_fn\n"
                     "from helion_remote.coordinator._helion_compat import _unset_fn\n"
                     "class P:\n    def f(self, config):\n        self._record_compile_failure(config)\n"
                     '"""helion._compat.x in a docstring is prose"""\n')
    assert private_name_violations(probe, "m", helion_private_names, declared) == []


def test_every_declared_private_name_is_private_and_checked(declared: dict[str, tuple[str, ...]]) -> None:
    """The lists hold private names only, and each module's checker accepts its own list."""
    from helion_remote.coordinator import _helion_compat
    from helion_remote.target import patches
    from helion_remote.worker import _helion_worker_compat

    for module, names in declared.items():
        assert names and all(_private(d) for d in names), module
    _helion_compat.verify_private_names()
    _helion_worker_compat.verify_private_names()
    patches.verify_patch_points()
    for check in (_helion_compat.verify_private_names, _helion_worker_compat.verify_private_names):
        with pytest.raises(ImportError, match="helion._compat._not_a_name"):
            check(("helion._compat._not_a_name",))


_IMPORT_FAILS = textwrap.dedent(
    """
    import importlib, json, sys
    import helion_remote  # the package imports the coordinator's compat module on its own
    from helion_remote._versions import helion_version
    from helion_remote.errors import CompatError
    out = {}
    for module, dotted in json.loads(sys.argv[1]):
        owner_name, _, attribute = dotted.rpartition(".")
        from helion_remote.worker._helion_worker_compat import resolve_name
        owner = resolve_name(owner_name)
        saved = owner.__dict__[attribute]
        delattr(owner, attribute)
        sys.modules.pop(module, None)
        try:
            importlib.import_module(module)
            out[module] = "imported"
        except CompatError as error:
            out[module] = "named" if helion_version() in str(error) and dotted.rpartition(".")[2] in str(error) else str(error)
        finally:
            setattr(owner, attribute, saved)
            sys.modules.pop(module, None)
    print(json.dumps(out))
    """
)


def test_each_compat_module_fails_at_import_naming_the_helion_version() -> None:
    """Remove one listed name from Helion, import the compat module: it must refuse, naming version and name."""
    cases = [
        ("helion_remote.coordinator._helion_compat", "helion.autotuner.benchmark_provider._unset_fn"),
        ("helion_remote.worker._helion_worker_compat", "helion._compat._is_amd_cdna"),
        ("helion_remote.worker._helion_worker_compat", "helion.autotuner.config_spec.ConfigSpec._flat_fields"),
        ("helion_remote.target.patches", "helion._compat._regs_per_block"),
    ]
    proc = subprocess.run([sys.executable, "-c", _IMPORT_FAILS, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {module: "named" for module, _ in cases}


# ------------------------------------------------------------------ the Modal code digest

_JOB_PATH = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from pathlib import Path
    import helion_remote.backends.modal.worker as modal_worker
    from helion_remote.argcodec import upload_args
    from helion_remote.blobs import DirectoryBlobStore
    from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, SourceModule
    from helion_remote.target import probe_kernels
    from helion_remote.worker.runtime import WorkerRuntime

    work = Path(tempfile.mkdtemp())
    modal_worker.ContainerWorker("jobs", blob_root=str(work / "blobs")).ping()
    args = list(probe_kernels.probe_args("matmul", "cpu", 32))
    bound = probe_kernels.matmul.bind(tuple(args))
    kernel = KernelSource(bound.to_triton_code(bound.config_spec.default_config()), bound.kernel.name)
    store = DirectoryBlobStore(work / "store")
    upload = upload_args(store, args)
    definition = SourceModule("_rules_probe", Path(probe_kernels.__file__).read_text())
    spec = SessionSpec("s-rules", kernel.entry_name, upload.digest, kernel, kernel_definition=definition,
                       kernel_attr="matmul")
    runtime = WorkerRuntime("w-rules", store, str(work / "run"))
    summary = runtime.open_session(spec)
    assert summary.space_report and "fingerprint" in summary.space_report, summary.space_report
    result = runtime.run_job(BenchmarkJob(job_id="j", kernel=kernel, args_digest=spec.args_digest,
                                          baseline_digest=spec.baseline_digest, tolerances=spec.tolerances,
                                          compile_timeout_s=60, run_timeout_s=60, warmup_ms=1.0, rep_ms=2.0))
    assert result.status == "ok", result.error_message
    print(json.dumps(sorted(m for m in sys.modules if m == "helion_remote" or m.startswith("helion_remote."))))
    """
)


def test_the_code_digest_covers_every_module_a_worker_loads() -> None:
    """A container's job path (ping, open a session with the space report, run a job) loads only digested code."""
    from helion_remote.backends.modal.versions import worker_modules

    proc = subprocess.run(
        [sys.executable, "-c", _JOB_PATH], capture_output=True, text=True, timeout=600, cwd=str(ROOT),
        env={**os.environ, "TRITON_INTERPRET": "1",
             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"helion_remote.worker.runtime", "helion_remote.target.space", "helion_remote.kernel_copy"} <= loaded
    assert sorted(loaded - set(worker_modules())) == []


def test_editing_any_digested_file_changes_the_digest(tmp_path: Path) -> None:
    from helion_remote.backends.modal import versions

    copy = tmp_path / "helion_remote"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    files = versions.worker_files(copy)
    assert [f.relative_to(copy) for f in files] == [f.relative_to(PACKAGE_DIR) for f in versions.worker_files()]
    base = versions.digest_files(files, copy)
    assert base == versions.code_digest()
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert versions.digest_files(files, copy) != base, path
        path.write_bytes(original)
    assert versions.digest_files(files, copy) == base


def test_a_new_import_in_worker_code_joins_the_digest(tmp_path: Path) -> None:
    """Derived, not listed: a function-level import of a new module pulls it in."""
    from helion_remote.backends.modal import versions

    copy = tmp_path / "helion_remote"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = versions.digest_files(versions.worker_files(copy), copy)
    (copy / "brand_new.py").write_text("VALUE = 1\n")
    assert "helion_remote.brand_new" not in versions.worker_modules(root=copy)
    modules = copy / "worker" / "modules.py"
    modules.write_text(modules.read_text() + "\n\ndef _uses_new() -> int:\n    from .. import brand_new\n\n"
                       "    return brand_new.VALUE\n")
    assert "helion_remote.brand_new" in versions.worker_modules(root=copy)
    (copy / "brand_new.py").write_text("VALUE = 2\n")
    changed = versions.digest_files(versions.worker_files(copy), copy)
    (copy / "brand_new.py").write_text("VALUE = 1\n")
    assert len({base, changed, versions.digest_files(versions.worker_files(copy), copy)}) == 3
