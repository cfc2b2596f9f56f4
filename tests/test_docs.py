"""README.md and docs/*.md stay true: every `./launch.sh ...` command in them is accepted by the
launcher's argument parsing (a dry parse that resolves the config and runs nothing), every
relative link resolves, and `./launch.sh help` lists the commands the README lists.

The quick-start commands themselves run end to end elsewhere in the suite:
`./launch.sh search` on shapes in tests/test_search_run.py
(test_search_leaves_a_complete_run_folder), `./launch.sh retrain` on a search's export in
tests/test_retrain.py (test_retrain_a_search_export), the launcher's own dispatch in
tests/test_launch.py, and `./launch.sh test` is what CI runs (.ci/run).

Placeholders in the documented commands: METRIC is miou, NUM_GPUS is 2, a retrain FILE written
as FILE or with a `<...>` part is a shipped file (experiments/retrain/miou_bezier.yaml), and
`key=value`, `...` and the brackets of optional words are dropped. RUN_DIR, DIR and ADDR stay
words: `--resume RUN_DIR` and report folders are parsed but not looked up on disk.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from experiments.config import ConfigError
from retrain import run as retrain_run
from search import run as search_run

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHIPPED_FILE = "experiments/retrain/miou_bezier.yaml"
PLACEHOLDERS = {"METRIC": "miou", "NUM_GPUS": "2", "FILE": SHIPPED_FILE}
DROPPED = {"key=value", "...", "ARGS", "PYTEST_ARGS"}

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def documented_commands() -> list[tuple[str, str]]:
    """(where, the line from ./launch.sh on) of every command in code blocks and inline code."""
    found = []
    for page in PAGES:
        text = page.read_text()
        name = page.relative_to(REPO)
        for block in FENCE.finditer(text):
            lines = block.group(0).replace("\\\n", " ").splitlines()
            for number, line in enumerate(lines[1:-1], line_of(text, block.start()) + 1):
                if "./launch.sh" in line:
                    found.append((f"{name}:{number}", line[line.index("./launch.sh") :]))
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in INLINE_CODE.finditer(prose):
            code = " ".join(span.group(1).split())
            if "./launch.sh" in code:
                where = f"{name}:{line_of(prose, span.start())}"
                found.append((where, code[code.index("./launch.sh") :]))
    return found


def concrete(words: list[str]) -> list[str]:
    """The words with the placeholders of a synopsis filled in or dropped."""
    result = []
    for word in words:
        word = word.strip("[]")
        if not word or word in DROPPED:
            continue
        if word in PLACEHOLDERS:
            word = PLACEHOLDERS[word]
        elif "<" in word and word.endswith(".yaml"):
            word = SHIPPED_FILE
        result.append(word)
    return result


def launcher_commands() -> set[str]:
    """The command names of launch.sh's dispatch (`  search)`, `  -h|--help|help)`)."""
    text = (REPO / "launch.sh").read_text()
    dispatch = text[text.index('case "$cmd" in') :]
    names = re.findall(r"^  ([a-z|-]+)\)", dispatch, re.MULTILINE)
    return {name for alternatives in names for name in alternatives.split("|")}


def check_stage(stage, words: list[str]) -> None:
    """search.run or retrain.run: their own parse_args, then plan (the resolved config)."""
    args = stage.parse_args(words)
    if args.resume:  # the folder is a placeholder: parse only, with plan's own rule
        assert not args.words, "--resume takes no other words"
        return
    stage.plan(args)


def check_bench(words: list[str]) -> None:
    name = words[0]
    if name == "NAME":
        return
    script = REPO / "bench" / f"{name}.py"
    assert script.is_file(), f"no benchmark {script.relative_to(REPO)}"
    source = script.read_text()
    for word in words[1:]:
        if word.startswith("--"):
            flag = word.split("=")[0]
            assert f'"{flag}"' in source, f"bench/{name}.py has no option {flag}"


def check_data_words(words: list[str]) -> None:
    """check-data's own resolution of its words (the dataset need not exist)."""
    from experiments import check_data

    if not any(word.startswith("[") or "NAME" in word for word in words):
        check_data.resolve(words)


COMMANDS = documented_commands()


def test_the_pages_document_commands():
    assert len(COMMANDS) > 20 and any(where.startswith("README") for where, _ in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_is_accepted_by_the_launcher(where, command):
    words = concrete(shlex.split(command, comments=True)[1:])
    assert words, f"{where}: `{command}` names no command"
    name, rest = words[0], words[1:]
    assert name in launcher_commands(), f"{where}: launch.sh has no command '{name}'"
    try:
        if name == "search" and rest:
            check_stage(search_run, rest)
        elif name == "retrain" and rest:
            check_stage(retrain_run, rest)
        elif name == "bench" and rest:
            check_bench(rest)
        elif name == "check-data" and rest:
            check_data_words(rest)
    except (ConfigError, SystemExit, AssertionError) as error:
        pytest.fail(f"{where}: `{command}` is refused: {error}")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


LINKS = [
    (page, line_of(page.read_text(), m.start()), m.group(1))
    for page in PAGES
    for m in LINK.finditer(FENCE.sub(lambda b: "\n" * b.group(0).count("\n"), page.read_text()))
    if not re.match(r"[a-z]+:", m.group(1))
]


@pytest.mark.parametrize(
    "page,line,target", LINKS, ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _ in LINKS]
)
def test_relative_link_resolves(page, line, target):
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    where = f"{page.relative_to(REPO)}:{line}"
    assert linked.exists(), f"{where}: {target} does not exist"
    if anchor:
        assert anchor in anchors(linked), f"{where}: no heading '#{anchor}' in {linked.name}"


def test_the_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_help_lists_the_commands_and_benchmarks_the_readme_lists():
    usage = subprocess.run(
        [REPO / "launch.sh", "help"], capture_output=True, text=True, check=True
    ).stdout
    synopses = re.findall(r"^  ([a-z]\S*(?: \S+)*)$", usage, re.MULTILINE)
    readme = (REPO / "README.md").read_text()
    block = FENCE.search(readme, readme.index("## Commands")).group(0)
    listed = [line.removeprefix("./launch.sh ") for line in block.splitlines()[1:-1]]
    assert synopses == listed
    benches = re.search(r"run bench/NAME\.py: ((?:[a-z_ ]|\n {6})+)", usage).group(1).split()
    assert sorted(benches) == sorted(p.stem for p in (REPO / "bench").glob("*.py"))
    assert {line.split()[0] for line in synopses} <= launcher_commands()
