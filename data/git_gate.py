"""A reference-free gate for teacher outputs on the git task: is the reply one well-formed git
command that carries the request's own names? It needs no answer key, so it can filter what a
teacher wrote for requests nobody has labelled.

It is the source of a `python` grader (distill-tui runs `grade(sample, item)` in a fresh
interpreter), so it uses the standard library only. Score 1.0 = keep, 0.0 = drop; the checks,
in order, are the ways a small teacher was seen to go wrong on the shipped requests:
prose instead of a command, an invented subcommand (`git unstage`), runaway repetition
(`git checkout -b docs-update-docs-update-…`), and a name from the request left out or
changed (a branch called 'feature-login' answered with `-b feature`)."""

import re
import shlex

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
