"""The repository is whole: a clone with nothing beside it builds, tests and runs.

The capture corpus (``tests/corpus``) and the indicator reference (``tools/reference``) live
in the repository; no tracked file may reach for a folder beside the checkout, and the
corpus MANIFEST lists exactly the captures that are there, each with its truth file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.testenv import CORPUS, REPO

# Written so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./shared|parent\s*/\s*[\"']shared[\"']|/work[/]shared")
# History may name where things used to be.
HISTORY = {"CHANGELOG.md"}
# What the corpus holds besides captures (the README says what each is).
CORPUS_EXTRA = {"MANIFEST.tsv", "README.md", "oracle.sh"}
TRUTH_EXTRA = {"TSHARK_VERSION.txt", "TSHARK_ISSUES.tsv"}


def tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_tracked_file_reaches_outside_the_repository() -> None:
    found = []
    for name in tracked():
        path = REPO / name
        if name in HISTORY or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (captures)
            continue
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{lineno}: {line.strip()}")
    assert not found, "tracked files reach outside the repository:\n" + "\n".join(found)


def test_corpus_is_inside_the_repository() -> None:
    assert CORPUS.resolve().is_relative_to(REPO), f"default corpus {CORPUS} is outside {REPO}"
    assert (CORPUS / "MANIFEST.tsv").is_file()


def test_corpus_manifest_lists_every_capture_and_only_those() -> None:
    rows = (CORPUS / "MANIFEST.tsv").read_text().splitlines()
    assert rows[0].split("\t")[0] == "file"
    listed = [row.split("\t")[0] for row in rows[1:] if row]
    assert len(listed) == len(set(listed)), "MANIFEST lists a file twice"
    present = {p.name for p in CORPUS.iterdir() if p.is_file()} - CORPUS_EXTRA
    assert sorted(present - set(listed)) == [], "files in tests/corpus the MANIFEST lacks"
    assert sorted(set(listed) - present) == [], "MANIFEST rows whose file is missing"
    truth = {p.name for p in (CORPUS / "truth").iterdir()} - TRUTH_EXTRA
    assert truth == {f"{name}.tsv" for name in listed}, "truth files and MANIFEST differ"
    # every source's licence text is in the repository
    licences = {p.name for p in (CORPUS / "licenses").iterdir()}
    for repo, text in (
        ("zeek/zeek", "zeek-COPYING.txt"),
        ("OISF/suricata-verify", "suricata-verify-LICENSE.txt"),
        ("the-tcpdump-group/tcpdump", "tcpdump-LICENSE.txt"),
    ):
        assert text in licences, f"licence of {repo} missing"
    sources = {row.split("\t")[2] for row in rows[1:] if row}
    # "kaspwatch": made here by tools/make_variety.py, for classes no public trace held
    assert sources <= {
        "zeek/zeek",
        "OISF/suricata-verify",
        "the-tcpdump-group/tcpdump",
        "kaspwatch",
    }
    for row in rows[1:]:
        if row.split("\t")[2] == "kaspwatch":
            assert row.startswith("kaspwatch_") and "tools/make_variety.py" in row, row[:60]


def test_manifest_sizes_and_hashes_match_the_files() -> None:
    import hashlib

    rows = [r.split("\t") for r in (CORPUS / "MANIFEST.tsv").read_text().splitlines() if r]
    head = rows[0]
    size_at, sha_at = head.index("size_bytes"), head.index("sha256")
    for row in rows[1:]:
        data = (CORPUS / row[0]).read_bytes()
        assert len(data) == int(row[size_at]), row[0]
        assert hashlib.sha256(data).hexdigest() == row[sha_at], row[0]


def test_shipped_pack_is_built_from_the_reference_in_the_repository(tmp_path: Path) -> None:
    out = tmp_path / "kaspersky.yaml"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_pack.py"), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    shipped = REPO / "sensor" / "packs" / "kaspersky.yaml"
    assert out.read_text() == shipped.read_text(), "rerun tools/build_pack.py and commit"


def test_readme_lists_every_debian_package_the_setup_installs() -> None:
    script = (REPO / ".ci" / "system-packages.sh").read_text()
    packages = re.findall(r"need\+=\(([\w.+-]+)\)", script)
    assert "python3-venv" in packages, "stock Debian lacks python3-venv; make needs it"
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    words = set(re.findall(r"[\w.+-]+", section))
    missing = [p for p in packages if p not in words]
    assert not missing, f"README 'The two commands' does not list {missing}"


def test_ci_proves_a_bare_clone() -> None:
    run = (REPO / ".ci" / "run").read_text()
    assert re.search(r"git clone -q \"\$PWD\" \"\$tmp/kaspwatch\"", run)
    assert run.rstrip().endswith("make test")
    # the check .ci/run makes finds what this file's check finds
    probe = "x = REPO.parent / " + '"shared" / "corpus"\n'
    assert OUTSIDE.search(probe)
    pattern = re.search(r"git grep -nI -E '([^']+)'", run)
    assert pattern is not None
    grep = subprocess.run(
        ["grep", "-E", pattern.group(1)], input=probe, capture_output=True, text=True
    )
    assert grep.returncode == 0, "the pattern in .ci/run misses a path outside the repository"


def test_test_modules_share_code_through_helper_modules_only() -> None:
    """Shared test code lives in tests/testenv.py, tests/factories.py and the other helper
    modules: never imported from conftest (pytest's plugin) or from another test file."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.strip()
            if code.startswith(
                ("from tests.conftest", "import tests.conftest", "from tests.test_")
            ):
                offenders.append(f"{path.name}:{n}: {code}")
    assert offenders == []
