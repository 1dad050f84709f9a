"""Problems and benchmark shapes from outside the repository, declared in a JSON or TOML file.

``--attn-problems FILE`` (repeatable; also ``ATTNSUITE_PROBLEMS=a.json,b.toml``) reads a file like::

    {"version": 1,
     "problems": [
       {"family": "attention", "lq": 33, "lk": 65, "hq": 4, "hkv": 2, "dqk": 32, "dv": 32,
        "mask": {"kind": "causal", "align": "bottom_right"}, "dtypes": ["float32", "bfloat16"]}],
     "workloads": [
       {"name": "my-model", "description": "our attention at the shapes we ship",
        "entries": [{"tier": "quick", "family": "attention", "modes": ["fwd"],
                     "problem": {"batch": 2, "lq": 256, "hq": 8, "dqk": 64, "mask": {"kind": "causal"}}}]},
       {"name": "gpt2-mha",
        "entries": [{"tier": "full", "family": "attention", "problem": {"batch": 4, "lq": 2048, "hq": 12, "dqk": 64}}]}]}

``problems`` adds correctness problems to an existing family: every variant of the family is checked
on them (each ``dtypes`` entry the run also has; all of the run's when absent; on the run's device).
``workloads`` adds benchmark entries: to an existing workload (its name) or to a new one (with a
``description``). Problem fields are :class:`attnsuite.problem.Problem`'s (``lq``, ``hq`` and ``dqk``
required; ``lk`` defaults to ``lq``, ``hkv`` to ``hq``, ``dv`` to ``dqk``; ``args`` a table of family
settings; a correctness problem takes no ``dtype``, ``device`` or ``dropout``, a workload entry's
problem no ``device``; an entry's ``modes`` default to fwd, bwd and fwd+bwd), the mask a table of
:class:`attnsuite.problem.Mask`'s fields (only those its kind reads: ``Mask.FIELDS_OF_KIND``).
Every error names the file, the entry and the field.

From Python the same is :func:`attnsuite.registry.add_problems` and :func:`attnsuite.workloads.add_entries`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable, Optional

from . import decode_bench, json_files, registry, workloads
from .problem import Mask, Problem, ProblemError
from .record import DECODE_STEP_ARG, MODES

VERSION = 1
ENV = "ATTNSUITE_PROBLEMS"
MAX_BYTES = 4 * 2**20
FLOAT32_MAX = 3.4028234663852886e38
_ALL_DTYPES = tuple(sorted(registry.ALL_DTYPES))

_PROBLEM_FIELDS = {f.name: f for f in dataclasses.fields(Problem)}
_MASK_FIELDS = {f.name: f for f in dataclasses.fields(Mask)}
_TOP_KEYS = {"version", "problems", "workloads"}
_PROBLEM_ENTRY_KEYS = {"family", "dtypes"}  # besides the problem's own fields
_WORKLOAD_KEYS = {"name", "description", "source", "entries"}
_ENTRY_KEYS = {"tier", "family", "problem", "modes", "variants", "note"}
_LOADED: set[str] = set()


class ProblemFileError(ValueError):
    """A problems file that cannot be used; the message names the file, the entry and the field."""


def _read(path: Path) -> dict[str, Any]:
    def err(where: Any, problem: str) -> ProblemFileError:
        return ProblemFileError(f"{where}: {problem}")

    # the suite's one reader: a folder or a FIFO is named as such (both had read "no such file")
    raw = json_files.read_input_bytes(path, err)
    if len(raw) > MAX_BYTES:
        raise ProblemFileError(f"{path}: larger than {MAX_BYTES // 2**20} MiB; not a problems file")
    if path.suffix in (".yaml", ".yml"):  # it had read as "not valid JSON: Expecting value"
        raise ProblemFileError(f"{path}: a problems file is JSON (.json) or TOML (.toml); YAML is not read")
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError is a ValueError
            raise ProblemFileError(f"{path}: not valid TOML: {exc}") from None
    else:  # gzip-compressed or not, a key given twice named with its place; the same limit once
        # decompressed (a 10 MiB file gzipped to 10 KB had passed it)
        data = json_files.parse_json_bytes(raw, path, err, limit=MAX_BYTES)
    if not isinstance(data, dict):
        raise ProblemFileError(f"{path}: the top level must be a table/object with 'problems' and/or 'workloads'")
    return data


def _unknown(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ProblemFileError(f"{where}: unknown field(s) {', '.join(map(repr, extra))}; "
                               f"known: {', '.join(sorted(known))}")


def _typed(where: str, name: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ProblemFileError(f"{where}: field {name!r} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise ProblemFileError(f"{where}: field {name!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                        list: "a list", dict: "a table"}.get(k, k.__name__) for k in kinds)


def _arg_value_problem(value: Any) -> Optional[str]:
    """What makes an ``args`` value unusable whatever the family (a value a family cannot take is its
    ``check``'s to refuse), or None: args are numbers, strings, booleans and lists of them."""
    if isinstance(value, list):
        return next((p for p in map(_arg_value_problem, value) if p), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r}: not a finite number"
    if value is None or isinstance(value, dict):
        return f"{value!r}: args are numbers, strings, booleans or lists of them"
    return None


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _mask(where: str, value: Any) -> Mask:
    if isinstance(value, str):
        value = {"kind": value}
    _typed(where, "mask", value, dict)
    _unknown(f"{where}, mask", value, _MASK_FIELDS)
    fields = dict(value)
    if "doc_lens" in fields:
        fields["doc_lens"] = tuple(_typed(f"{where}, mask", "doc_lens", fields["doc_lens"], list))
    try:
        mask = Mask(**fields)
    except (ProblemError, TypeError) as exc:
        raise ProblemFileError(f"{where}, mask: {exc}") from None
    ignored = mask.ignored_fields()
    if ignored:  # {"kind": "causal", "window": 8} had silently become a plain causal mask
        reads = ", ".join(Mask.FIELDS_OF_KIND[mask.kind]) or "no other field"
        raise ProblemFileError(f"{where}, mask: kind {mask.kind!r} does not use {', '.join(map(repr, ignored))} "
                               f"(it reads {reads})")
    return mask


# Past these a problem cannot run anywhere: the float64 oracle of a correctness problem holds its
# scores (b*hq*lq*lk of them) several times over, and a benchmark's q, k, v and output must fit a
# device. An absurd length had allocated tens of GiB while collecting, blamed the variant for the
# suite's own MemoryError, and made the gate refuse the run's records.
MAX_ORACLE_SCORES = 1 << 28  # 2 GiB per float64 score matrix
MAX_INPUT_BYTES = 1 << 40  # 1 TiB: more than any one device holds


def _check_size(where: str, problem: Problem, *, oracle: bool) -> None:
    scores = problem.batch * problem.hq * problem.lq * problem.lk
    if oracle and scores > MAX_ORACLE_SCORES:
        raise ProblemFileError(f"{where}: batch*hq*lq*lk = {scores:.3g} scores: the float64 oracle of a correctness "
                               f"problem can hold at most {MAX_ORACLE_SCORES:.3g} (2 GiB); use a workload entry "
                               "for a benchmark of this size")
    elements = problem.batch * (problem.hq * problem.lq * (problem.dqk + problem.dv)
                                + problem.hkv * problem.lk * (problem.dqk + problem.dv))
    if problem.d_model:
        elements += 2 * problem.batch * problem.lq * problem.d_model
    if elements * 8 > MAX_INPUT_BYTES:
        raise ProblemFileError(f"{where}: its inputs and output alone are {elements * 8 / 2**40:.3g} TiB in float64: "
                               "larger than any device holds")


def problem_from(where: str, fields: dict[str, Any], device: str = "cpu",
                 known: Optional[Iterable[str]] = None) -> Problem:
    """A :class:`Problem` from a file's table of fields (defaults: lk = lq, hkv = hq, dv = dqk).
    ``known``: the keys the entry may hold, as an unknown key's message lists them (default: every
    field of a problem)."""
    _typed(where, "problem", fields, dict)
    _unknown(where, fields, _PROBLEM_FIELDS if known is None else known)
    for required in ("lq", "hq", "dqk"):  # Problem's own defaults (lq 17, ...) had stood in for a forgotten field
        if required not in fields:
            raise ProblemFileError(f"{where}: field {required!r} is required (lk, hkv and dv default to lq, hq and dqk)")
    kw: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "mask":
            kw["mask"] = _mask(where, value)
        elif name == "args":
            _typed(where, "args", value, dict)
            for arg, v in value.items():
                bad = _arg_value_problem(v)
                if bad:  # a NaN or 1e400 (inf) had reached the oracle and failed every test as the variant's
                    raise ProblemFileError(f"{where}: field 'args': {arg!r} is {bad}")
            kw["args"] = tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
        elif name in ("batch", "lq", "lk", "hq", "hkv", "dqk", "dv", "d_model", "seed"):
            kw[name] = _typed(where, name, value, int)
        elif name in ("scale", "softcap", "dropout"):
            kw[name] = float(_typed(where, name, value, (int, float)))
            if not math.isfinite(kw[name]) or abs(kw[name]) > FLOAT32_MAX:
                # JSON's 1e400 reads as infinity: every variant had failed "contains NaN or Inf"
                raise ProblemFileError(f"{where}: field {name!r}: {value!r} is not a finite number that float32 "
                                       "can hold")
        elif name == "alibi":
            kw[name] = _typed(where, name, value, bool)
        else:  # dtype, device, tag
            kw[name] = _typed(where, name, value, str)
    if "lq" in kw:
        kw.setdefault("lk", kw["lq"])
    if "hq" in kw:
        kw.setdefault("hkv", kw["hq"])
    if "dqk" in kw:
        kw.setdefault("dv", kw["dqk"])
    kw.setdefault("device", device)
    try:
        return Problem(**kw)
    except ProblemError as exc:
        raise ProblemFileError(f"{where}: {exc}") from None


# Problem fields a correctness problem must not set, and why: each had been taken and then ignored
# or judged wrongly.
_NOT_IN_A_CORRECTNESS_PROBLEM = {
    "dtype": "a correctness problem is checked in each dtype of 'dtypes' (a list; every dtype the run checks when "
             "left out): write \"dtypes\": [...]",
    "device": "a correctness problem runs on the run's device (--attn-device); leave the field out",
    "dropout": "dropout draws random masks, which the deterministic float64 oracle cannot match (the suite checks "
               "dropout statistically, test_correctness/test_dropout.py); use a workload entry to benchmark it",
}


# what a correctness entry may hold, as its unknown-key message lists it: its own keys and the problem
# fields it may set (it had listed dtype, device and dropout, refused there, and left out family and dtypes)
_CORRECTNESS_KEYS = (set(_PROBLEM_FIELDS) - set(_NOT_IN_A_CORRECTNESS_PROBLEM)) | _PROBLEM_ENTRY_KEYS


def _plain(problem: Problem) -> Problem:
    """The problem as an added one is compared: device and dtype left out (it takes the run's)."""
    return problem.with_(device="cpu", dtype="float32")


def _catalogue(family: registry.Family, own: bool = False) -> list[Problem]:
    """The family's problems on any device and dtype, each :func:`_plain` (what an added problem's id
    must not repeat); ``own``: its own only, not those files added."""
    out: list[Problem] = []
    for device in ("cpu", "cuda"):
        try:
            found = (family.problems(device, _ALL_DTYPES) if family.problems else []) if own else \
                registry.problems_of(family, device, _ALL_DTYPES)
            out += [_plain(q) for q in found]
        except Exception:  # noqa: BLE001 - a family whose problems need something absent: nothing to compare
            continue
    return out


def _id_twin(problem: Problem, catalogue: Iterable[Problem], earlier: Iterable[Problem]) -> Optional[str]:
    """Why ``problem`` cannot be added to its family: another problem of it (one of its ``catalogue``,
    see :func:`_catalogue`, or ``earlier`` in the same file) prints the same id but differs (ids show
    scale, softcap and dropout to 3 significant figures). Tests are keyed by id, so one of the two
    had been dropped without a word."""
    mine = _plain(problem)
    others = [(_plain(q), "earlier in this file") for q in earlier] + [(q, "of the family") for q in catalogue]
    for other, where in others:
        if other.id == mine.id and other != mine:
            return (f"its id {mine.id} is also the id of another problem {where}, which differs in "
                    f"{', '.join(mine.differs_in(other))} (ids show scale, softcap and dropout to 3 significant "
                    "figures): change a field so that the two ids differ")
    return None


def _family(where: str, name: Any) -> registry.Family:
    _typed(where, "family", name, str)
    known = {f.name: f for f in registry.families()}
    if not known:  # loaded from Python before any variant: the list had been empty
        raise ProblemFileError(f"{where}: field 'family': no family is registered in this process yet; load the "
                               "variants first (attnsuite.registry.load_all()), then the problems file")
    if name not in known:
        raise ProblemFileError(f"{where}: field 'family': unknown family {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def _check_level(where: str, family: registry.Family, problem: Problem) -> None:
    if problem.level != family.level:
        need = "needs d_model (x to y)" if family.level == "layer" else "must not set d_model"
        raise ProblemFileError(f"{where}: family {family.name!r} is {family.level}-level: the problem {need}")
    if family.check is not None:
        try:
            family.check(problem)
        except (ProblemError, ValueError, TypeError) as exc:  # a misspelt arg had skipped every test of it
            raise ProblemFileError(f"{where}: family {family.name!r}: {exc}") from None
    unread = registry.unread_args(family, problem)
    if unread:
        raise ProblemFileError(f"{where}: field 'args': {unread}")


def _check_decode(where: str, problem: Problem, modes: tuple[str, ...]) -> None:
    """A workload entry's decode settings: mode ``decode`` needs a problem a decode step can run on,
    and ``decode_step`` means nothing without it (such entries had loaded, and their cases skipped)."""
    if "decode" in modes:
        why = decode_bench.problem_reason(problem)
        if why:  # named by the entry's modes: the problem may be right for the entry's other modes
            raise ProblemFileError(f"{where}: field 'modes': 'decode' needs a problem a decode step can run on: {why}")
    elif problem.arg(DECODE_STEP_ARG) is not None:
        raise ProblemFileError(f"{where}.problem: field 'args': {DECODE_STEP_ARG!r} is read only by mode 'decode', which "
                               f"'modes' ({', '.join(modes)}) leaves out")


def load(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Validate a problems file and register what it declares; (problems added, workload entries added).

    The whole file is checked before anything is registered, so a bad file changes nothing. Loading
    the same file twice registers it once.
    """
    p = Path(path).expanduser().resolve()
    data = _read(p)
    _unknown(str(p), data, _TOP_KEYS)
    version = data.get("version", VERSION)
    if version != VERSION:
        raise ProblemFileError(f"{p}: field 'version': {version!r} is not supported (this suite reads {VERSION})")
    if not data.get("problems") and not data.get("workloads"):  # a file that adds nothing had loaded silently
        raise ProblemFileError(f"{p}: no problems and no workloads: the file adds nothing")
    problems: list[tuple[str, Problem, tuple[str, ...]]] = []
    catalogues: dict[str, list[Problem]] = {}
    own: dict[str, list[Problem]] = {}  # each family's own problems (not those files added)
    for i, item in enumerate(_typed(str(p), "problems", data.get("problems", []), list)):
        where = f"{p}: problems[{i}]"
        _typed(where, "entry", item, dict)
        if "family" not in item:
            raise ProblemFileError(f"{where}: field 'family' is required")
        family = _family(where, item["family"])
        dtypes = tuple(_typed(where, "dtypes", item.get("dtypes", []), list))
        if "dtypes" in item and not dtypes:  # it had meant every dtype, as if it were left out
            raise ProblemFileError(f"{where}: field 'dtypes': an empty list selects no dtype (leave the field out "
                                   "for every dtype the family checks)")
        for d in dtypes:
            _typed(where, "dtypes", d, str)
        if len(set(dtypes)) < len(dtypes):
            raise ProblemFileError(f"{where}: field 'dtypes': {list(dtypes)} names a dtype twice")
        fields = {k: v for k, v in item.items() if k not in _PROBLEM_ENTRY_KEYS}
        for name, why in _NOT_IN_A_CORRECTNESS_PROBLEM.items():
            if name in fields:
                raise ProblemFileError(f"{where}: field {name!r}: {why}")
        problem = problem_from(where, fields, known=_CORRECTNESS_KEYS)
        if problem.arg(DECODE_STEP_ARG) is not None:  # the decode checks draw their own steps
            raise ProblemFileError(f"{where}: field 'args': {DECODE_STEP_ARG!r} is a benchmark setting (a workload "
                                   "entry with mode 'decode'); the correctness checks of decoding split each "
                                   "problem into steps themselves")
        _check_size(where, problem, oracle=True)
        twin = next((i for i, (f, q, _) in enumerate(problems) if f == family.name and q == problem), None)
        if twin is not None:  # it had been merged silently: one problem is checked once
            raise ProblemFileError(f"{where}: the same problem as problems[{twin}] ({problem.id})")
        if dtypes:
            try:
                for d in dtypes:
                    problem.with_(dtype=d)
            except ProblemError as exc:
                raise ProblemFileError(f"{where}: field 'dtypes': {exc}") from None
        _check_level(where, family, problem)
        if family.name not in catalogues:  # built once per family, not once per problem of the file
            catalogues[family.name] = _catalogue(family)
            own[family.name] = _catalogue(family, own=True)
        twin_id = _id_twin(problem, catalogues[family.name], [q for f, q, _ in problems if f == family.name])
        if twin_id:
            raise ProblemFileError(f"{where}: {twin_id}")
        if _plain(problem) in own[family.name]:  # it had merged without a word: checked once, as before
            raise ProblemFileError(f"{where}: {problem.id} is already one of the {family.name} family's own problems "
                                   "(checked without this entry): leave it out, or change a field")
        problems.append((family.name, problem, dtypes))
    entries: list[tuple[str, str, str, str, workloads.Entry]] = []
    for i, item in enumerate(_typed(str(p), "workloads", data.get("workloads", []), list)):
        where = f"{p}: workloads[{i}]"
        _typed(where, "entry", item, dict)
        _unknown(where, item, _WORKLOAD_KEYS)
        name = _typed(where, "name", item.get("name"), str)
        description = _typed(where, "description", item.get("description", ""), str)
        source = _typed(where, "source", item.get("source", str(p)), str)
        if name not in workloads.WORKLOADS and not description:
            raise ProblemFileError(f"{where}: workload {name!r} is new: field 'description' is required "
                                   f"(existing: {', '.join(workloads.WORKLOADS)})")
        if name in workloads.WORKLOADS and "description" in item and description != workloads.WORKLOADS[name].description:
            # it had been dropped without a word, and the entries added to the existing workload
            raise ProblemFileError(f"{where}: workload {name!r} exists ({workloads.WORKLOADS[name].description}): "
                                   "field 'description' is for a new workload; leave it out to add entries to this "
                                   "one, or give the workload a name of its own")
        for j, entry in enumerate(_typed(where, "entries", item.get("entries", []), list)):
            ewhere = f"{where}.entries[{j}]"
            _typed(ewhere, "entry", entry, dict)
            _unknown(ewhere, entry, _ENTRY_KEYS)
            for required in ("tier", "family", "problem"):
                if required not in entry:
                    raise ProblemFileError(f"{ewhere}: field {required!r} is required")
            tier = _typed(ewhere, "tier", entry["tier"], str)
            if tier not in workloads.TIERS:
                raise ProblemFileError(f"{ewhere}: field 'tier': {tier!r} is not one of {', '.join(workloads.TIERS)}")
            family = _family(ewhere, entry["family"])
            fields = _typed(ewhere, "problem", entry["problem"], dict)
            if "device" in fields:  # it had been ignored: the entry ran on the run's device
                raise ProblemFileError(f"{ewhere}.problem: field 'device': a workload entry runs on the run's device "
                                       "(--attn-device); leave the field out")
            # like the built-in entries: bf16 in the full tier, fp32 in the quick tier, unless stated
            fields = {"dtype": "bfloat16" if tier == "full" else "float32", **fields}
            problem = problem_from(f"{ewhere}.problem", fields)
            _check_size(f"{ewhere}.problem", problem, oracle=False)
            _check_level(f"{ewhere}.problem", family, problem)
            # like the built-in entries: decode only when asked (a kernel variant never decodes)
            modes = tuple(_typed(ewhere, "modes", entry.get("modes", list(workloads.ALL)), list))
            bad = [m for m in modes if m not in MODES]
            if bad or not modes:
                raise ProblemFileError(f"{ewhere}: field 'modes': {bad or modes!r} not in {', '.join(MODES)}")
            _check_decode(ewhere, problem, modes)
            variants = tuple(_typed(ewhere, "variants", entry.get("variants", []), list))
            for v in variants:
                try:
                    registry.get(_typed(ewhere, "variants", v, str))
                except registry.UnknownVariantError as exc:
                    raise ProblemFileError(f"{ewhere}: field 'variants': {exc}") from None
            note = _typed(ewhere, "note", entry.get("note", ""), str)
            made = workloads.Entry(family.name, problem, modes=modes, variants=variants, note=note)
            if str(p) not in _LOADED:  # (loading the same file again registers nothing: nothing to repeat)
                earlier = [e for n, _, _, t, e in entries if n == name and t == tier]
                why = workloads.duplicate_of(name, tier, made, earlier)
                if why:
                    raise ProblemFileError(f"{ewhere}: {why}")
            entries.append((name, description, source, tier, made))
    if str(p) in _LOADED:
        return len(problems), len(entries)
    for family_name, problem, dtypes in problems:
        registry.add_problems(family_name, [problem], dtypes=dtypes, source=str(p))
    for name, description, source, tier, entry in entries:
        workloads.add_entries(name, tier, [entry], description=description, source=source)
    _LOADED.add(str(p))
    return len(problems), len(entries)


def load_all(paths: Iterable[str] = ()) -> list[str]:
    """Load ``ATTNSUITE_PROBLEMS`` then ``paths``; the resolved paths loaded, in order. An error
    starts with where the file was named (``ATTNSUITE_PROBLEMS`` or ``--attn-problems``)."""
    loaded = []
    named = [(ENV, s) for s in os.environ.get(ENV, "").split(",")] + [("--attn-problems", s) for s in paths]
    for where, spec in named:
        spec = spec.strip()
        if spec:
            try:
                load(spec)
            except ProblemFileError as exc:
                raise ProblemFileError(f"{where}: {exc}") from None
            loaded.append(str(Path(spec).expanduser().resolve()))
    return loaded
