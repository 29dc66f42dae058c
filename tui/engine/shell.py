"""Shell command lines taken apart and compared, for the command_match grader.

A model asked for "the git command that does X" answers in many shapes: fenced, after a "$ "
prompt, inside a sentence, with flags in another order, -fd for -f -d, --message for -m,
'single' for "double" quotes. `extract_command` finds the command line in a reply,
`parse_command` takes it apart (program, subcommand, options as an order-free multiset with
aliases resolved, arguments) and `compare_commands` scores two of them and names what
differs."""

from __future__ import annotations

import difflib
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple


def _clip(text: str, limit: int = 80) -> str:
    """A value quoted on one line, shortened in the middle when long."""
    if len(text) > limit:
        half = (limit - 1) // 2
        text = text[:half] + "…" + text[-half:]
    return repr(text)


class ShellSyntaxError(ValueError):
    pass


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


@dataclass(frozen=True, slots=True)
class _Opt:
    canonical: tuple[str, ...]  # usually one name; -D is --delete --force
    value: Literal["none", "required", "attached"]  # attached: only as -uno / --x=no


def _option_table(spec: str) -> dict[str, _Opt]:
    """'-m/--message= -a/--all -u/--untracked-files=? -D>--delete,--force' → spellings."""
    table: dict[str, _Opt] = {}
    for entry in spec.split():
        expands: tuple[str, ...] | None = None
        if ">" in entry:
            entry, _, target = entry.partition(">")
            expands = tuple(target.split(","))
        kind: Literal["none", "required", "attached"] = "none"
        if entry.endswith("=?"):
            kind, entry = "attached", entry[:-2]
        elif entry.endswith("="):
            kind, entry = "required", entry[:-1]
        names = entry.split("/")
        canonical = expands or (next((n for n in names if n.startswith("--")), names[0]),)
        for name in names:
            table[name] = _Opt(canonical, kind)
    return table


# Options of the git subcommands people ask for most, with their short/long aliases and
# whether they take a value (so `-m "msg"` is one option, not an option and an argument).
_GIT_COMMON = "-q/--quiet -v/--verbose -h/--help"
_GIT_OPTIONS_SPEC: dict[str, str] = {
    "add": "-A/--all/--no-ignore-removal -n/--dry-run -f/--force -p/--patch -u/--update "
    "-i/--interactive -N/--intent-to-add -e/--edit",
    "archive": "--format= -o/--output= --prefix= -l/--list --remote=",
    "blame": "-L= -w -e/--show-email -s",
    "branch": "-d/--delete -D>--delete,--force -a/--all -r/--remotes -m/--move "
    "-M>--move,--force -c/--copy -C>--copy,--force -f/--force -u/--set-upstream-to= "
    "-l/--list -t/--track --show-current --merged --no-merged --unset-upstream",
    "checkout": "-b= -B= -f/--force -t/--track -p/--patch -m/--merge --orphan= --detach",
    "cherry-pick": "-n/--no-commit -e/--edit -x -m/--mainline= -s/--signoff --continue "
    "--abort --skip",
    "clean": "-f/--force -d -n/--dry-run -x -X -i/--interactive -e/--exclude=",
    "clone": "-b/--branch= --depth= --recurse-submodules/--recursive -o/--origin= "
    "-n/--no-checkout --bare --mirror --single-branch -l/--local --filter=",
    "commit": "-m/--message= -a/--all -F/--file= -n/--no-verify -s/--signoff "
    "-S/--gpg-sign=? -C/--reuse-message= -c/--reedit-message= -e/--edit --amend --fixup= "
    "--squash= --author= --date= -p/--patch --allow-empty --no-edit -t/--template=",
    "config": "--global --local --system -l/--list --unset --get -e/--edit --add "
    "--replace-all --unset-all --get-all",
    "diff": "--cached/--staged --stat --name-only --name-status -w/--ignore-all-space "
    "-b/--ignore-space-change -R --word-diff=? -U/--unified= --no-index --check",
    "fetch": "-a/--append -p/--prune -t/--tags -f/--force -n/--no-tags --all --depth= "
    "--unshallow -P/--prune-tags",
    "grep": "-i/--ignore-case -n/--line-number -l/--files-with-matches/--name-only "
    "-w/--word-regexp -e= -v/--invert-match -c/--count -E/--extended-regexp "
    "-F/--fixed-strings -P/--perl-regexp -I",
    "init": "-b/--initial-branch= --bare",
    "log": "-n/--max-count= -p/-u/--patch --oneline --graph --all --follow -S= -G= "
    "--author= --since/--after= --until/--before= --grep= -L= --stat --decorate=? "
    "--pretty=? --format= -i/--regexp-ignore-case --reverse --merges --no-merges "
    "--first-parent --name-only --name-status --abbrev-commit",
    "merge": "--abort --continue --squash --no-ff --ff-only --ff -m= -s/--strategy= "
    "-X/--strategy-option= -e/--edit --no-edit --no-commit --commit",
    "mv": "-f/--force -n/--dry-run -k",
    "pull": "-r/--rebase=? --no-rebase --ff-only --no-ff -f/--force --all -t/--tags "
    "-p/--prune --autostash",
    "push": "-u/--set-upstream -f/--force -n/--dry-run -d/--delete --tags --all "
    "--force-with-lease=? --no-verify --follow-tags --mirror --prune",
    "rebase": "-i/--interactive --onto= --continue --abort --skip -x/--exec= --root "
    "--autosquash --no-autosquash --autostash -f/--force-rebase",
    "reflog": "-n/--max-count=",
    "remote": "-f -t= -m=",
    "reset": "--soft --hard --mixed --merge --keep -p/--patch",
    "restore": "-s/--source= -S/--staged -W/--worktree -p/--patch --ours --theirs",
    "revert": "-n/--no-commit -e/--edit --no-edit -m/--mainline= --continue --abort --skip",
    "rm": "-r -f/--force -n/--dry-run --cached",
    "shortlog": "-s/--summary -n/--numbered -e/--email",
    "show": "--stat --name-only --name-status -s/--no-patch --oneline --pretty=? --format=",
    "stash": "-u/--include-untracked -k/--keep-index -m/--message= -p/--patch -a/--all "
    "-S/--staged --index",
    "status": "-s/--short -b/--branch -u/--untracked-files=? --ignored=? --porcelain=? --long",
    "submodule": "--init --recursive --remote -f/--force --depth= -b/--branch= --name=",
    "switch": "-c/--create= -C/--force-create= -d/--detach -f/--force/--discard-changes "
    "-t/--track --orphan= -m/--merge",
    "tag": "-a/--annotate -s/--sign -d/--delete -f/--force -m/--message= -l/--list -n=? "
    "-u/--local-user= -v/--verify -F/--file= --sort= --contains=",
    "worktree": "--detach -b= -B= -f/--force --lock --checkout --no-checkout",
}
_GIT_COMMON_TABLE = _option_table(_GIT_COMMON)
_GIT_OPTIONS: dict[str, dict[str, _Opt]] = {
    sub: {**_GIT_COMMON_TABLE, **_option_table(spec)} for sub, spec in _GIT_OPTIONS_SPEC.items()
}
_GIT_GLOBAL = _option_table(
    "-C= -c= --git-dir= --work-tree= --no-pager -P/--no-pager -p/--paginate --bare "
    "--namespace= --version --exec-path=?"
)
# `git stash drop` and `git stash pop` are different commands; `git stash` is `git stash push`.
_GIT_NESTED: dict[str, tuple[frozenset[str], str | None]] = {
    "stash": (
        _words("push pop apply drop list show branch clear save create store"),
        "push",
    ),
    "remote": (
        _words("add remove rm rename set-url get-url show prune update set-head"),
        None,
    ),
    "bisect": (
        _words("start good bad new old skip reset log run visualize replay terms"),
        None,
    ),
    "submodule": (
        _words(
            "add init update status deinit foreach sync summary absorbgitdirs set-url set-branch"
        ),
        None,
    ),
    "worktree": (_words("add list remove prune move lock unlock repair"), None),
    "notes": (_words("add append copy edit list show remove prune merge"), None),
}
_GIT_COUNT_SUBCOMMANDS = frozenset({"log", "reflog", "shortlog", "show", "whatchanged"})
# Programs whose first argument is a subcommand.
_SUBCOMMAND_PROGRAMS = _words(
    "git docker kubectl npm pip pip3 cargo go apt apt-get systemctl brew conda poetry uv gh "
    "yarn pnpm helm terraform"
)
# Programs with getopt-style short options, so -rf is -r -f.
_GETOPT_PROGRAMS = _words(
    "git rm ls cp mv mkdir rmdir grep egrep fgrep chmod chown ln du df ps cat head tail wc "
    "sort uniq cut touch diff tar zip unzip curl wget ssh scp rsync find xargs sed awk"
)
_PROMPT = re.compile(r"^(?:\$|>|PS[^>]*>)\s+")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_FENCED = re.compile(r"```[^\n`]*\n(.*?)(?:\n```|$)", re.DOTALL)


class Flag(NamedTuple):
    name: str
    value: str | None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name} {shlex.quote(self.value)}"


def _flag_key(flag: Flag) -> tuple[str, bool, str]:
    return (flag.name, flag.value is not None, flag.value or "")


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """A command line taken apart: program, subcommand, options (order-free), arguments."""

    text: str
    program: str
    subcommand: str
    flags: tuple[Flag, ...]  # sorted; repeats kept (-vv is two)
    args: tuple[str, ...]


def extract_command(text: str, program: str | None = None) -> str:
    """The command line in a model's reply: inside a code fence if there is one, without a
    leading "$ " prompt, preferring the first line that starts with `program` (then an inline
    `code` span that does), else the first non-empty line. Backslash continuations joined."""
    if "\n" not in text and "`" not in text and not text.lstrip().startswith(("$", ">", "PS")):
        return text.strip()
    fenced = _FENCED.search(text)
    body = fenced.group(1) if fenced else text
    lines = [line.strip() for line in body.splitlines()]
    lines = [_PROMPT.sub("", line) for line in lines if line]
    if not lines:
        return ""

    def joined(index: int) -> str:
        parts = [lines[index]]
        while parts[-1].endswith("\\") and index + 1 < len(lines):
            parts[-1] = parts[-1][:-1].rstrip()
            index += 1
            parts.append(lines[index])
        return " ".join(parts)

    def unwrap(line: str) -> str:
        if len(line) >= 2 and line[0] == "`" and line[-1] == "`":
            return line.strip("`").strip()
        return line

    if program:
        for i, line in enumerate(lines):
            line = unwrap(line)
            if line == program or line.startswith(program + " "):
                lines[i] = line
                return joined(i)
        for line in lines:
            for span in _INLINE_CODE.findall(line):
                span = span.strip()
                if span == program or span.startswith(program + " "):
                    return span
    lines[0] = unwrap(lines[0])
    return joined(0)


def _split(line: str) -> list[str]:
    if "'" not in line and '"' not in line and "\\" not in line:
        return line.split()
    try:
        return shlex.split(line)
    except ValueError as error:  # "No closing quotation", "No escaped character"
        raise ShellSyntaxError(str(error).lower()) from error


@lru_cache(maxsize=65536)
def parse_command(line: str) -> ShellCommand:
    """Take a command line apart. Raises ShellSyntaxError for unbalanced quotes."""
    tokens = _split(line)
    if not tokens:
        return ShellCommand(line, "", "", (), ())
    program = tokens[0].rsplit("/", 1)[-1] if "/" in tokens[0] else tokens[0]
    rest = tokens[1:]
    flags: list[Flag] = []
    subcommand = ""
    table: dict[str, _Opt] = {}
    if program in _SUBCOMMAND_PROGRAMS:
        i = 0
        if program == "git":
            while i < len(rest) and rest[i].startswith("-") and rest[i] != "--":
                i = _take_option(rest, i, _GIT_GLOBAL, True, flags)
        if i < len(rest) and not rest[i].startswith("-"):
            subcommand = rest[i]
            i += 1
            if program == "git":
                table = _GIT_OPTIONS.get(subcommand, _GIT_COMMON_TABLE)
                nested = _GIT_NESTED.get(subcommand)
                if nested is not None:
                    known, default = nested
                    if i < len(rest) and rest[i] in known:
                        subcommand += " " + rest[i]
                        i += 1
                    elif default is not None:
                        subcommand += " " + default
        rest = rest[i:]
    getopt = program in _GETOPT_PROGRAMS
    args: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--":
            args.extend(rest[i + 1 :])
            break
        if len(token) > 1 and token[0] == "-" and token != "-":
            if (
                program == "git"
                and token[1:].isdigit()
                and subcommand.split(" ")[0] in _GIT_COUNT_SUBCOMMANDS
            ):
                flags.append(Flag("--max-count", token[1:]))
                i += 1
                continue
            if token[1].isdigit() and not getopt:
                args.append(token)  # a negative number
                i += 1
                continue
            i = _take_option(rest, i, table, getopt, flags)
            continue
        args.append(token)
        i += 1
    flags.sort(key=_flag_key)
    return ShellCommand(line, program, subcommand, tuple(flags), tuple(args))


def _take_option(
    tokens: list[str], i: int, table: dict[str, _Opt], getopt: bool, flags: list[Flag]
) -> int:
    """Read the option at tokens[i] into `flags`; returns the index of the next token."""
    token = tokens[i]
    if token.startswith("--"):
        name, eq, value = token.partition("=")
        spec = table.get(name)
        if spec is None:
            flags.append(Flag(name, value if eq else None))
            return i + 1
        if eq:
            flags.extend(Flag(c, value) for c in spec.canonical)
            return i + 1
        if spec.value == "required" and i + 1 < len(tokens):
            flags.extend(Flag(c, tokens[i + 1]) for c in spec.canonical)
            return i + 2
        flags.extend(Flag(c, None) for c in spec.canonical)
        return i + 1
    if not getopt or len(token) == 2:
        spec = table.get(token)
        if spec is None:
            flags.append(Flag(token, None))
            return i + 1
        if spec.value == "required" and i + 1 < len(tokens):
            flags.extend(Flag(c, tokens[i + 1]) for c in spec.canonical)
            return i + 2
        flags.extend(Flag(c, None) for c in spec.canonical)
        return i + 1
    # A cluster of short options: -fd is -f -d; -mmsg is -m msg; -uno is -u no.
    j = 1
    while j < len(token):
        short = "-" + token[j]
        spec = table.get(short)
        if spec is None:
            flags.append(Flag(short, None))
            j += 1
            continue
        rest = token[j + 1 :]
        if spec.value in ("required", "attached") and rest:
            flags.extend(Flag(c, rest) for c in spec.canonical)
            return i + 1
        if spec.value == "required" and i + 1 < len(tokens):
            flags.extend(Flag(c, tokens[i + 1]) for c in spec.canonical)
            return i + 2
        flags.extend(Flag(c, None) for c in spec.canonical)
        j += 1
    return i + 1


def _quote_list(values: Sequence[str]) -> str:
    return " ".join(shlex.quote(v) for v in values)


def _args_difference(got: Sequence[str], expected: Sequence[str]) -> str:
    """'master' instead of 'main'; missing 'src/'; extra '--'."""
    if sorted(got) == sorted(expected):
        return (
            f"in another order: {_clip(_quote_list(got))}, expected {_clip(_quote_list(expected))}"
        )
    parts: list[str] = []
    matcher = difflib.SequenceMatcher(None, got, expected, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "replace":
            got_part, expected_part = _quote_list(got[i1:i2]), _quote_list(expected[j1:j2])
            parts.append(f"{_clip(got_part)} instead of {_clip(expected_part)}")
        elif op == "delete":
            parts.append(f"extra {_clip(_quote_list(got[i1:i2]))}")
        elif op == "insert":
            parts.append(f"missing {_clip(_quote_list(expected[j1:j2]))}")
    return ", ".join(parts)


def compare_commands(output: ShellCommand, reference: ShellCommand) -> tuple[float, str]:
    """Score an output's command against the reference's, in 0..1, with the differences.

    Same program, subcommand, options (any order, aliases resolved) and arguments → 1.0. A
    different program → 0. Otherwise 0.3 for the subcommand plus 0.35 × the overlap of the
    options and 0.35 × the similarity of the argument lists; with a different subcommand the
    options and arguments count for at most 0.25 in all."""
    if output.program != reference.program:
        return 0.0, f"program differs: got {_clip(output.program)}, expected " + _clip(
            reference.program
        )
    out_flags, ref_flags = Counter(output.flags), Counter(reference.flags)
    union = sum((out_flags | ref_flags).values())
    flag_sim = sum((out_flags & ref_flags).values()) / union if union else 1.0
    if output.args == reference.args:
        arg_sim = 1.0
    else:
        arg_sim = difflib.SequenceMatcher(None, output.args, reference.args).ratio()
    problems: list[str] = []
    same_sub = output.subcommand == reference.subcommand
    if not same_sub:
        problems.append(
            f"subcommand differs: got {_clip(output.subcommand or '(none)')}, expected "
            f"{_clip(reference.subcommand or '(none)')}"
        )
    if out_flags != ref_flags:
        missing = sorted((ref_flags - out_flags).elements(), key=_flag_key)
        extra = sorted((out_flags - ref_flags).elements(), key=_flag_key)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(_clip(str(f), 60)[1:-1] for f in missing))
        if extra:
            parts.append("extra " + ", ".join(_clip(str(f), 60)[1:-1] for f in extra))
        problems.append("flags differ: " + "; ".join(parts))
    if output.args != reference.args:
        problems.append("args differ: " + _args_difference(output.args, reference.args))
    if not problems:
        return 1.0, "equivalent to the reference"
    # A different subcommand is a different command that may share options or arguments.
    score = 0.3 + 0.35 * (flag_sim + arg_sim) if same_sub else 0.125 * (flag_sim + arg_sim)
    explanation = "; ".join(problems)
    if len(explanation) > 300:
        explanation = explanation[:299] + "…"
    return round(min(score, 0.99), 4), explanation
