"""The documentation matches the code, and the repository is self-contained.

* docs/results-schema.md documents every column of every Parquet table (``eeray.results.schema``), under its
  table's section and with its Arrow type, and lists no column that the schema no longer has.
* Every Markdown file that a tracked file mentions (code comments, docstrings, READMEs, notebooks, configs)
  exists in the repository: no file points at a document the repository does not contain.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eeray import results

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DOC = ROOT / "docs" / "results-schema.md"
SCHEMA_DOC_NAME = "docs/results-schema.md"


# --------------------------------------------------------------------------- the results schema
def documented_columns() -> dict[str, dict[str, str]]:
    """{table: {column: documented type}} from the '## <table>' sections' rows ``| `column` | type | ...``."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in SCHEMA_DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## (\S+)\s*$", line)
        if heading:
            current = heading.group(1)
            sections[current] = {}
            continue
        row = re.match(r"^\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|", line)
        if row and current is not None:
            sections[current][row.group(1)] = row.group(2)
    return sections


def type_name(arrow_type) -> str:
    """The type as the page writes it: Arrow's names, except float64 for Arrow's 'double'."""
    return {"double": "float64"}.get(str(arrow_type), str(arrow_type))


def test_schema_doc_has_one_section_per_table():
    assert sorted(documented_columns()) == sorted(results.PARQUET_TABLES), (
        f"{SCHEMA_DOC_NAME} must have exactly one '## <table>' section per Parquet table "
        f"{list(results.PARQUET_TABLES)}; found {sorted(documented_columns())}")


@pytest.mark.parametrize("table", results.PARQUET_TABLES)
def test_every_schema_column_is_documented(table):
    documented = documented_columns().get(table, {})
    missing = [c for c in results.schema(table).names if c not in documented]
    assert not missing, (
        f"{SCHEMA_DOC_NAME}, section '## {table}', does not document {len(missing)} column(s) of "
        f"eeray.results.schema({table!r}): {', '.join(missing)}. Add one row per column: "
        "| `name` | arrow type | unit | meaning |")


@pytest.mark.parametrize("table", results.PARQUET_TABLES)
def test_documented_columns_exist_with_their_types(table):
    schema = results.schema(table)
    documented = documented_columns().get(table, {})
    stale = [c for c in documented if c not in schema.names]
    assert not stale, (f"{SCHEMA_DOC_NAME}, section '## {table}', documents column(s) that "
                       f"eeray.results.schema({table!r}) does not have: {', '.join(stale)}")
    wrong = [f"{c} (documented {documented[c]!r}, schema {type_name(schema.field(c).type)!r})"
             for c in documented if type_name(schema.field(c).type) != documented[c]]
    assert not wrong, f"{SCHEMA_DOC_NAME}, section '## {table}', has wrong types: {'; '.join(wrong)}"


# --------------------------------------------------------------------------- mentioned Markdown files
# a path-like token ending in .md; {placeholders} of f-strings (results_{tag} and the suffix) become wildcards
MD_MENTION = re.compile(r"[\w./{}:\-]*\.md\b")
SKIP_DIRS = {"results", "__pycache__", "build", "dist", "node_modules"}


def repository_files() -> list[str]:
    """The repository's files (POSIX paths relative to the root): tracked, and new ones git does not ignore;
    outside a git checkout, the files under the root that are not build or run outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        files = [p for p in out.decode("utf-8").split("\0") if p and (ROOT / p).is_file()]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                       and not d.endswith(".egg-info") and not (Path(dirpath, d, "pyvenv.cfg")).exists()]
        files += [Path(dirpath, f).relative_to(ROOT).as_posix() for f in filenames]
    return files


def mentions(text: str):
    """(line number, mention) for every .md file named in ``text``, URLs and bare '.md' left out."""
    for number, line in enumerate(text.splitlines(), 1):
        for match in MD_MENTION.finditer(line):
            name = match.group(0).lstrip("./:")
            if "://" in match.group(0) or not posixpath.basename(name)[:-3]:
                continue
            yield number, name


def exists(mention: str, source: str, markdown: list[str]) -> bool:
    """The mention names a Markdown file of the repository: relative to the root, to the mentioning file's
    folder, or by its file name (tables that name results files next to their folder's README)."""
    pattern = re.sub(r"\{[^}]*\}", "*", mention)
    candidates = {posixpath.normpath(pattern), posixpath.normpath(posixpath.join(posixpath.dirname(source), pattern))}
    if any(fnmatch.fnmatchcase(md, c) for md in markdown for c in candidates):
        return True
    return "/" not in pattern and any(fnmatch.fnmatchcase(posixpath.basename(md), pattern) for md in markdown)


def test_every_mentioned_markdown_file_exists():
    files = repository_files()
    markdown = [f for f in files if f.endswith(".md")]
    dangling = []
    for source in files:
        data = (ROOT / source).read_bytes() if (ROOT / source).is_file() else b""
        if b"\0" in data:
            continue  # binary
        for number, name in mentions(data.decode("utf-8", errors="replace")):
            if not exists(name, source, markdown):
                dangling.append(f"{source}:{number}: {name}")
    assert not dangling, ("these files mention Markdown files that are not in the repository (point them at "
                          "docs/ instead):\n  " + "\n  ".join(dangling))


def test_mention_check_catches_a_dangling_reference():
    """The checker itself: a missing document is caught, present ones and placeholders are not. (The missing
    names are built at run time, so this file does not mention them itself.)"""
    md = ".md"
    missing, cluster = "NOTES" + md, "docs/cluster" + md
    markdown = ["README" + md, "docs/paper-choices" + md, "benchmarks/results/diagnostics_cpu" + md]
    assert [m for _, m in mentions(f"see docs/paper-choices{md} (B14) and {missing}")] == \
        ["docs/paper-choices" + md, missing]
    assert exists("docs/paper-choices" + md, "eeray/config.py", markdown)
    assert exists("paper-choices" + md, "docs/architecture" + md, markdown)  # relative to the mentioning file
    assert exists("diagnostics_{args.tag}" + md, "benchmarks/diagnostics.py", markdown)
    assert not exists(missing, "eeray/config.py", markdown)
    assert not exists(cluster, "README" + md, markdown)
    assert list(mentions(f"https://example.org/guide{md} and ``{md}`` files")) == []


# --------------------------------------------------------------------------- citations of the paper's choices
CHOICES_DOC = ROOT / "docs" / "paper-choices.md"
CITATION = re.compile(r"paper-choices\.md \(([^()]*)\)")


def choice_ids() -> set[str]:
    """The ids docs/paper-choices.md defines: entries written '**A1.' or '- **D1.', and the section 'G.'."""
    text = CHOICES_DOC.read_text(encoding="utf-8")
    ids = set(re.findall(r"^(?:- )?\*\*([A-F]\d+)\.", text, flags=re.M))
    ids |= set(re.findall(r"^## ([A-G])\. ", text, flags=re.M))
    return ids


def cited_ids(text: str) -> set[str]:
    """Ids cited as 'docs/paper-choices.md (B14)', '(D25–D27)', '(D28a)', '(E1, E2, E4; B13–B17)'."""
    return {m for inner in CITATION.findall(text) for m in re.findall(r"\b([A-G]\d{0,2})[ab]?\b", inner)}


def test_paper_choices_defines_the_41_open_choices():
    ids = choice_ids()
    expected = {f"{letter}{i}" for letter, lo, hi in (("A", 1, 12), ("B", 13, 18), ("C", 19, 22), ("D", 23, 31),
                                                       ("E", 32, 40), ("F", 41, 41)) for i in range(lo, hi + 1)}
    missing = sorted(expected - ids, key=lambda s: int(s[1:]))
    assert not missing, f"docs/paper-choices.md has no entry for the open choices {missing}"


def test_every_cited_choice_exists():
    ids = choice_ids()
    unknown = []
    for source in repository_files():
        data = (ROOT / source).read_bytes()
        if b"\0" in data:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            unknown += [f"{source}:{number}: {i}" for i in sorted(cited_ids(line) - ids)]
    assert not unknown, "these lines cite ids that docs/paper-choices.md does not define:\n  " + "\n  ".join(unknown)


def test_citation_parser():
    assert cited_ids("x (docs/paper-choices.md (E1, E2, E4; B13–B17)) and docs/paper-choices.md (D28a)") == \
        {"E1", "E2", "E4", "B13", "B17", "D28"}
    assert cited_ids("docs/paper-choices.md (G): sensitive") == {"G"}
    assert cited_ids("docs/paper-choices.md, Definitions") == set()


def test_no_citation_of_the_old_design_documents():
    """Short citations of the old design documents (their name, then '§4 A7') name no file, so the Markdown check
    cannot see them; the documents' names must not appear as words at all (built at run time, so this file does
    not contain them)."""
    names = ["".join(parts) for parts in (("SP", "EC"), ("ARCHI", "TECTURE"), ("ENVIRON", "MENT"), ("STY", "LE"))]
    word = re.compile(r"\b(" + "|".join(names) + r")\b")
    hits = []
    for source in repository_files():
        data = (ROOT / source).read_bytes()
        if b"\0" in data:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if word.search(line):
                hits.append(f"{source}:{number}: {line.strip()[:100]}")
    assert not hits, ("these lines cite design documents the repository does not contain; cite docs/ instead "
                      "(e.g. docs/paper-choices.md (A7)):\n  " + "\n  ".join(hits))


# --------------------------------------------------------------------------- the README a newcomer reads
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"
README_MAX_LINES = 130  # what it is, the two commands, a researcher's day, the studies, where to go next


def test_readme_is_short_and_keeps_the_ci_command():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (f"README.md has {len(lines)} lines; keep it to about 120 and move "
                                            "reference material to docs/reference.md")
    # .ci/run runs the first non-empty line after the marker (awk in .ci/run): the README's test command
    after = lines[lines.index("# ci:test") + 1:]
    assert next(l for l in after if l.strip()) == "bash quickstart.sh test"


def test_readme_says_how_to_use_the_environment():
    text = README.read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text and ".venv/bin/python" in text


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    unlinked = [p for p in pages if f"]({p}" not in text]
    assert not unlinked, f"README.md's 'Where to go next' does not link: {unlinked}"


# the width sweep's smoke time: "smoke" followed on the same line by a duration
SMOKE_TIME = re.compile(r"smoke[^.;]{0,80}?(\b\d+(\.\d+)?\s?(s|min|mins|minutes?|seconds?)\b|a minute)", re.I)


def smoke_time_lines(files) -> list[str]:
    return [f"{os.path.relpath(f, ROOT)}:{n}: {line.strip()}" for f in files
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if SMOKE_TIME.search(line)]


def test_the_smoke_time_is_measured_and_stated_once():
    files = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "studies").glob("*.py")),
             ROOT / "eeray" / "cli.py", ROOT / "quickstart.sh"]
    found = smoke_time_lines(files)
    assert len(found) == 1 and found[0].startswith("README.md:"), (
        "state the smoke time once, measured, in README.md's Studies section; found:\n  " + "\n  ".join(found))
    assert re.search(r"took \d+ s wall", found[0]) and "measured" in README.read_text(encoding="utf-8")


def test_smoke_time_pattern_catches_the_old_wordings(tmp_path):
    old = tmp_path / "old_readme.txt"
    old.write_text("`--smoke` runs a tiny version in about a minute.\nsmoke ~1.5 min (2 cores)\n"
                   "Smoke:    python studies/width_sweep.py --smoke        # 2 CPU cores, < 2 minutes\n"
                   "0.94 s of Tune overhead per trial, and 3.0% of a smoke study's wall\n")
    assert len(smoke_time_lines([old])) == 3


def test_reference_lists_every_flag_and_exit_status():
    from eeray import cli

    text = REFERENCE.read_text(encoding="utf-8")
    flags = [o for a in cli.parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert len(flags) >= 13
    missing = [f for f in flags if f"`{f}" not in text]
    assert not missing, f"docs/reference.md does not document these flags of every study: {missing}"
    for status in ("0", "1", "2", "3", "130"):
        assert re.search(rf"^\| {status} \|", text, re.M), f"docs/reference.md's exit-status table lacks {status}"


@pytest.mark.parametrize("study", sorted(p.stem for p in (ROOT / "studies").glob("*.py")))
def test_study_help_fits_a_screen_and_docstring_states_the_essentials(study):
    path = ROOT / "studies" / f"{study}.py"
    doc = path.read_text(encoding="utf-8").split('"""')[1]
    for field in ("Run:", "Smoke:", "Runtime:", "Expect:"):
        assert re.search(rf"^{field}", doc, re.M), f"{path.name}'s docstring has no '{field}' line"
    assert "Tried and not adopted" not in doc  # the history of profiles is docs/study-notes.md
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) <= 40, f"{path.name} --help is {len(lines)} lines at 80 columns:\n{out.stdout}"
    assert "docs/reference.md" in out.stdout
