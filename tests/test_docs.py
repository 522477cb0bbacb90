"""Checks on the documentation: README.md, docs/*.md and projects/*/README.md.

Each rule is a function applied to text, so it is tested twice: on the real pages, and on
small bad examples that it must reject (so that a rule that can never fail is caught).

Rules:

* README.md has at most ``README_MAX_LINES`` lines;
* every relative Markdown link resolves to a file or folder inside the repository (and
  a ``#fragment`` to a heading of the Markdown file it points to); other links are public
  ``http(s)`` URLs;
* no page cites issue numbers ("issue 22", "#24", ``.../issues/24``);
* no page names paths outside the repository: ``../shared`` and ``/work/`` nowhere, local
  home folders nowhere, ``/tmp/`` only inside code (example commands may use a scratch
  folder such as ``--root /tmp/m40``);
* README.md keeps the test command that ``.ci/run`` runs, in the block CI documents.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
# The README's test command, character for character: `.ci/run` runs the same command.
README_TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest tests -q -x --durations=15'
README_TEST_INTRO = 'this is exactly what CI runs'


def doc_files(root=ROOT):
    """README.md, docs/*.md and projects/*/README.md (those that exist)."""
    files = [root / 'README.md'] + sorted((root / 'docs').glob('*.md'))
    files += sorted((root / 'projects').glob('*/README.md'))
    return [f for f in files if f.is_file()]


# --------------------------------------------------------------------------- Markdown parsing

FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'(`+)(.+?)\1', re.S)


def without_code(text):
    """``text`` with fenced blocks and inline code spans blanked (line numbers kept)."""
    return CODE_SPAN.sub(lambda m: re.sub(r'[^\n]', ' ', m.group(0)), without_code_blocks(text))


def fenced_blocks(text):
    """``[(line index of the opening fence, [lines inside])]``."""
    blocks, current, start = [], None, None
    for i, line in enumerate(text.split('\n')):
        if FENCE.match(line):
            if current is None:
                current, start = [], i
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE_LINK = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$', re.M)
AUTOLINK = re.compile(r'<((?:https?|ftp|file)://[^>\s]+)>')


def markdown_links(text):
    """``[(line number, target)]`` of the inline, reference and auto links outside code."""
    prose = without_code(text)
    found = []
    for pattern in (INLINE_LINK, REFERENCE_LINK, AUTOLINK):
        for m in pattern.finditer(prose):
            found.append((prose.count('\n', 0, m.start()) + 1, m.group(1)))
    return sorted(found)


def heading_anchors(text):
    """The anchors GitHub gives the headings of ``text`` (``-1``, ``-2`` for repeats)."""
    anchors, seen = set(), {}
    for line in without_code_blocks(text).split('\n'):
        m = re.match(r'^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not m:
            continue
        title = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', m.group(1))  # links: their text
        slug = re.sub(r'[^\w\- ]', '', title.replace('`', '').lower()).replace(' ', '-')
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else '{}-{}'.format(slug, n))
    return anchors


def without_code_blocks(text):
    """``text`` with fenced blocks blanked (inline code kept: headings may hold it)."""
    lines, in_fence = [], False
    for line in text.split('\n'):
        if FENCE.match(line):
            in_fence = not in_fence
            lines.append('')
        else:
            lines.append('' if in_fence else line)
    return '\n'.join(lines)


# --------------------------------------------------------------------------- the rules

WEB = re.compile(r'^https?://[^\s/]+\.[^\s/]+')


def link_problems(path, text, root=ROOT):
    """Links of the page ``path`` (with content ``text``) that do not resolve in the repository."""
    root = Path(root).resolve()
    problems = []
    for line, target in markdown_links(text):
        where = '{}:{}: {!r}'.format(path.name, line, target)
        if not target:
            problems.append(where + ' is empty')
            continue
        if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target):  # a URL (or a Windows drive)
            if not WEB.match(target):
                problems.append(where + ' is neither a relative path nor a public http(s) URL')
            continue
        if target.startswith(('/', '~', '\\')):
            problems.append(where + ' is an absolute path; use a path relative to the page')
            continue
        file_part, _, fragment = target.partition('#')
        dest = (Path(path).parent / file_part).resolve() if file_part else Path(path).resolve()
        try:
            dest.relative_to(root)
        except ValueError:
            problems.append(where + ' points outside the repository')
            continue
        if not dest.exists():
            problems.append(where + ' does not exist ({})'.format(dest))
            continue
        if fragment and dest.suffix == '.md':
            dest_text = text if dest == Path(path).resolve() else dest.read_text(encoding='utf-8')
            if fragment not in heading_anchors(dest_text):
                problems.append(where + ' names no heading of {}'.format(dest.name))
    return problems


ISSUE_WORD = re.compile(r'\bissue\s*#?\d+', re.I)
HASH_NUMBER = re.compile(r'(?<![\w/&])#\d+\b')
ISSUE_URL = re.compile(r'/(?:issues|pull|pulls)/\d+')


def issue_reference_problems(text):
    """Issue numbers: "issue 22" anywhere, "#24" outside code, issue or pull-request URLs."""
    problems = []
    for pattern, scope in ((ISSUE_WORD, text), (ISSUE_URL, text), (HASH_NUMBER, without_code(text))):
        for m in pattern.finditer(scope):
            problems.append('line {}: {!r}'.format(scope.count('\n', 0, m.start()) + 1, m.group(0)))
    return problems


ANYWHERE = re.compile(r'\.\./shared\b|(?<![\w.~-])/work/|(?<![\w.~-])/(?:home|root|Users|mnt)/')
PROSE_ONLY = re.compile(r'(?<![\w.~-])/tmp/')


def outside_path_problems(text):
    """Paths outside the repository: ``../shared``, ``/work/`` and home folders anywhere;
    ``/tmp/`` outside code (an example command's scratch folder is fine)."""
    problems = []
    for pattern, scope in ((ANYWHERE, text), (PROSE_ONLY, without_code(text))):
        for m in pattern.finditer(scope):
            problems.append('line {}: {!r}'.format(scope.count('\n', 0, m.start()) + 1, m.group(0)))
    return problems


def readme_length_problems(text, limit=README_MAX_LINES):
    n = len(text.splitlines())
    return [] if n <= limit else ['README.md has {} lines (at most {})'.format(n, limit)]


def ci_command_problems(readme_text, ci_text, command=README_TEST_COMMAND):
    """README.md must keep ``command`` as the only line of the fenced block right after the
    sentence that says CI runs it, and ``.ci/run`` must run the same command (or read it from
    README.md)."""
    problems = []
    lines = readme_text.split('\n')
    blocks = {start: body for start, body in fenced_blocks(readme_text)}
    intro = [i for i, line in enumerate(lines) if README_TEST_INTRO in line and not FENCE.match(line)]
    if not intro:
        problems.append('README.md has no line saying {!r}'.format(README_TEST_INTRO))
    else:
        start = next((j for j in range(intro[0] + 1, len(lines)) if lines[j].strip()), None)
        body = blocks.get(start)
        if body is None or not FENCE.match(lines[start]):
            problems.append('README.md: no code block right after {!r}'.format(README_TEST_INTRO))
        elif [b for b in body if b.strip()] != [command]:
            problems.append('README.md: the CI test block holds {!r}, not {!r}'.format(body, command))
    ci_lines = [line.strip() for line in ci_text.split('\n') if not line.strip().startswith('#')]
    if command not in ci_lines and not any('README.md' in line for line in ci_lines):
        problems.append('.ci/run neither runs {!r} nor reads README.md'.format(command))
    return problems


# --------------------------------------------------------------------------- the real pages

def _read(path):
    return path.read_text(encoding='utf-8')


DOCS = doc_files()


def test_the_pages_exist():
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    for page in ('README.md', 'docs/training.md', 'docs/evaluation.md', 'docs/benchmarks.md',
                 'docs/plugin_api.md', 'docs/architecture.md'):
        assert page in names
    assert len([p for p in DOCS if p.parent.parent.name == 'projects']) >= 5


def test_readme_is_short():
    assert readme_length_problems(_read(ROOT / 'README.md')) == []


@pytest.mark.parametrize('path', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_in_the_repository(path):
    assert link_problems(path, _read(path)) == []


@pytest.mark.parametrize('path', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers(path):
    assert issue_reference_problems(_read(path)) == []


@pytest.mark.parametrize('path', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paths_outside_the_repository(path):
    assert outside_path_problems(_read(path)) == []


def test_readme_keeps_the_ci_test_command():
    assert ci_command_problems(_read(ROOT / 'README.md'), _read(ROOT / '.ci' / 'run')) == []


# --------------------------------------------------------------------------- the rules can fail

GOOD_README_BLOCK = ('Run the test suite (this is exactly what CI runs):\n\n```bash\n'
                     + README_TEST_COMMAND + '\n```\n')
CI_RUNNING_IT = '#!/usr/bin/env bash\nset -e\n' + README_TEST_COMMAND + '\n'


def test_readme_length_rule():
    assert readme_length_problems('line\n' * README_MAX_LINES) == []
    assert readme_length_problems('line\n' * (README_MAX_LINES + 1))


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'page.md').write_text('# Page\n\n## Two words\n\n## Two words\n')
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'README.md').write_text('# Readme\n')
    return tmp_path


@pytest.mark.parametrize('text', [
    '[ok](docs/page.md)',
    '[ok](docs/page.md#two-words) and [ok](docs/page.md#two-words-1)',
    '[ok](configs/) and [ok](configs)',
    '# Readme\n[ok](#readme)',
    '![img](docs/page.md)',
    '[paper](https://arxiv.org/abs/1811.07487)',
    '[ref]: docs/page.md',
    '`[not a link](missing.md)` in code',
    '```\n[not a link](missing.md)\n```',
])
def test_link_rule_accepts(fake_repo, text):
    assert link_problems(fake_repo / 'README.md', text, root=fake_repo) == []


@pytest.mark.parametrize('text', [
    '[missing](docs/missing.md)',
    '[bad anchor](docs/page.md#no-such-heading)',
    '[bad own anchor](#nowhere)',
    '[outside](../shared/notes.md)',
    '[absolute](/work/main/README.md)',
    '[home](~/notes.md)',
    '[file url](file:///etc/passwd)',
    '[empty]()',
    '![missing image](docs/missing.png)',
    '[ref]: ../outside.md',
    'text <file:///tmp/x> text',
])
def test_link_rule_rejects(fake_repo, text):
    assert link_problems(fake_repo / 'README.md', text, root=fake_repo)


def test_link_rule_resolves_from_the_page_folder(fake_repo):
    page = fake_repo / 'docs' / 'page.md'
    text = page.read_text() + '[up](../README.md#readme) [same](page.md#two-words)'
    assert link_problems(page, text, root=fake_repo) == []
    assert link_problems(page, '[wrong base](docs/page.md)', root=fake_repo)


def test_heading_anchors_follow_github():
    text = '# A `code` title (with parens)\n## Re-ranking\n## metrics.jsonl\n## Re-ranking\n```\n# not\n```'
    assert heading_anchors(text) == {'a-code-title-with-parens', 're-ranking', 'metricsjsonl',
                                     're-ranking-1'}


@pytest.mark.parametrize('text', [
    'Fixed in issue 22.', 'see Issue #24', 'as in issue#7', 'closes #24.', '(#3)',
    'https://github.com/owner/repo/issues/7', 'https://github.com/owner/repo/pull/12',
    '`issue 22` in code is still an issue number',
])
def test_issue_rule_rejects(text):
    assert issue_reference_problems(text)


@pytest.mark.parametrize('text', [
    'Issues are tracked elsewhere.', '[a heading](#section-2)', 'C# and F#', 'colour &#35;',
    '`#24` in code', '```bash\n# a shell comment #24\n```', 'the official repository issues page',
    'https://github.com/owner/repo/issues',
])
def test_issue_rule_accepts(text):
    assert issue_reference_problems(text) == []


@pytest.mark.parametrize('text', [
    'see ../shared/notes.md', '`../shared/data/market1501.tar.gz`', 'under /work/main',
    '```\ncd /work/main\n```', 'kept in /tmp/run for later', 'in /home/user/data',
])
def test_outside_path_rule_rejects(text):
    assert outside_path_problems(text)


@pytest.mark.parametrize('text', [
    '```bash\npython tools/market_subset.py --root /tmp/m40\n```', '`--out-dir /tmp/bench`',
    'log/work/x and data/tmp/y', '`~/.cache/torch/hub/checkpoints`', 'DIR/market1501/',
])
def test_outside_path_rule_accepts(text):
    assert outside_path_problems(text) == []


def test_command_rule():
    assert ci_command_problems(GOOD_README_BLOCK, CI_RUNNING_IT) == []
    assert ci_command_problems(GOOD_README_BLOCK, 'cmd=$(grep pytest README.md)\n$cmd\n') == []
    # the command changed by one character
    changed = GOOD_README_BLOCK.replace('--durations=15', '--durations=10')
    assert ci_command_problems(changed, CI_RUNNING_IT)
    # the sentence, or the block after it, gone
    assert ci_command_problems('```bash\n' + README_TEST_COMMAND + '\n```\n', CI_RUNNING_IT)
    assert ci_command_problems('Run the test suite (this is exactly what CI runs):\n\nText.\n',
                                 CI_RUNNING_IT)
    # more in the block than the command
    extra = GOOD_README_BLOCK.replace(README_TEST_COMMAND, README_TEST_COMMAND + '\necho done')
    assert ci_command_problems(extra, CI_RUNNING_IT)
    # CI runs something else
    assert ci_command_problems(GOOD_README_BLOCK, 'python -m pytest tests\n')
    assert ci_command_problems(GOOD_README_BLOCK, '# ' + README_TEST_COMMAND + '\n')
