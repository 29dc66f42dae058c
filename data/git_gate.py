"""A reference-free gate for teacher outputs on the git task: is the reply one well-formed git
command that carries the request's own names? It needs no answer key, so it can filter what a
teacher wrote for requests nobody has labelled.

It is the source of a `python` grader (distill-tui runs `grade(sample, item)` in a fresh
interpreter), so it uses the standard library only. Score 1.0 = keep, 0.0 = drop; the checks,
in order, are the ways a small teacher was seen to go wrong on the shipped requests:
prose instead of a command, an invented subcommand (`git unstage`), an option the subcommand
does not have (`git checkout --branch`; the installed git's own usage text, `git SUB -h`, says
which it has, when git is on PATH), runaway repetition (`git checkout -b
docs-update-docs-update-…`), and a name from the request left out or changed (a branch called
'feature-login' answered with `-b feature`)."""

import re
import shlex
import subprocess

# `git help -a` (git 2.39): the commands a reply may name.
_SUBCOMMAND_WORDS = """add am archive bisect branch bundle checkout cherry-pick citool clean
    clone commit
    describe diff fetch format-patch gc grep init log maintenance merge mv notes pull push
    range-diff rebase reset restore revert rm shortlog show sparse-checkout stash status
    submodule switch tag worktree config fast-export fast-import filter-branch mergetool
    pack-refs prune reflog remote repack replace annotate blame bugreport count-objects
    difftool fsck help instaweb merge-tree rerere show-branch verify-commit verify-tag version
    whatchanged apply cherry ls-files ls-remote ls-tree merge-base name-rev rev-list rev-parse
    show-ref check-ignore check-attr for-each-ref cat-file hash-object update-index
    symbolic-ref update-ref write-tree read-tree diff-tree diff-index diff-files"""
SUBCOMMANDS = set(_SUBCOMMAND_WORDS.split())
# Quoted names, file names, commit hashes, URLs and numbers in a request are the arguments the
# command must carry, character for character.
_QUOTED = re.compile(r"""(?<!\w)'([^'\s][^']*?)'(?!\w)|"([^"]+)"|`([^`]+)`""")
_FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})(?![\w/-])")
_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
_URL = re.compile(r"(?:https?://|git@)\S+[\w/]")
_SENTENCE_END = re.compile(r"[.,;:!?]+$")
# A chunk of four or more characters repeated back to back inside one word
# (docs-update-docs-update-…), unless the request itself has that word.
_REPEATED = re.compile(r"(.{4,}?)\1")


# Subcommands whose `-h` lists only some of the options they take (the log/diff/rev-list
# families accept every revision and diff option): their options are not checked.
_OPEN_WORDS = """log show diff whatchanged rev-list shortlog diff-tree diff-index diff-files
    format-patch range-diff cherry blame annotate grep difftool reflog"""
_OPEN_OPTIONS = set(_OPEN_WORDS.split())
_OPTION = re.compile(r"(?<![\w-])(--?\[?[A-Za-z0-9][\w\[\]-]*)")
_OPTIONS: dict[str, tuple[set[str], set[str]] | None] = {}


def _options(sub: str) -> tuple[set[str], set[str]] | None:
    """(long, short) options of `git SUB` as its usage lists them; None when unknown (no git
    on PATH, or no usage text)."""
    if sub not in _OPTIONS:
        try:
            done = subprocess.run(
                ["git", sub, "-h"], capture_output=True, text=True, timeout=5, cwd="/"
            )
            text = done.stdout + done.stderr
        except (OSError, subprocess.SubprocessError):
            text = ""
        longs: set[str] = set()
        shorts: set[str] = set()
        for match in _OPTION.finditer(text):
            token = match.group(1)
            if token.startswith("--"):
                body = token[2:]  # --[no-]edit: both spellings
                for name in (body.replace("[no-]", ""), body.replace("[no-]", "no-")):
                    longs.add(name.split("[")[0].rstrip("-"))
            else:
                shorts.add(token[1])
        _OPTIONS[sub] = (longs, shorts) if "usage" in text else None
    return _OPTIONS[sub]


def _unknown_option(words: list[str]) -> str | None:
    if words[1] in _OPEN_OPTIONS:
        return None
    known = _options(words[1])
    if known is None:
        return None
    longs, shorts = known
    for word in words[2:]:
        if word == "--":
            break
        if word.startswith("--"):
            name = word[2:].split("=")[0]
            # git takes --no-X for any long option X, and any unambiguous prefix of 3+ chars.
            names = [name] + ([name[3:]] if name.startswith("no-") else [])
            if name and not any(
                known_name == n or (len(n) >= 3 and known_name.startswith(n))
                for known_name in longs
                for n in names
            ):
                return f"git {words[1]} has no option --{name}"
        # -3 is a count (git log -3), not an option letter
        elif word[:1] == "-" and len(word) > 1 and word[1] not in shorts and not word[1].isdigit():
            return f"git {words[1]} has no option -{word[1]}"
    return None


def _required(request: str) -> list[str]:
    names = []
    for match in _QUOTED.finditer(request):
        names.append(next(group for group in match.groups() if group))
    unquoted = _QUOTED.sub(" ", request)
    for pattern in (_URL, _HASH, _FILE):
        for match in pattern.finditer(unquoted):
            names.append(_SENTENCE_END.sub("", match.group(0)))
    return [n for n in names if n]


def check(request: str, reply: str) -> str | None:
    """None when the reply passes; otherwise why not."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        return "not exactly one line"
    line = lines[0].strip().strip("`").strip()
    try:
        words = shlex.split(line)
    except ValueError as error:
        return f"not valid shell ({error})"
    if len(words) < 2 or words[0] != "git":
        return "not a git command"
    if words[1] not in SUBCOMMANDS:
        return f"no git subcommand {words[1]!r}"
    unknown = _unknown_option(words)
    if unknown:
        return unknown
    if len(words) > 24 or any(words.count(w) > 2 for w in words[2:]):
        return "runaway repetition"
    if any(_REPEATED.search(w) and w not in request for w in words[2:]):
        return "runaway repetition"
    for name in _required(request):
        if name not in line:
            return f"leaves out {name!r} from the request"
    return None


def grade(sample: dict, item: dict) -> float:
    return 0.0 if check(item.get("input", ""), sample.get("output_text", "")) else 1.0
