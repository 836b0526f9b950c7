"""Every TAO spec file in the corpus that an implemented task claims must load.

Task spec modules (``src/taoctl/tasks/*/spec.py``) are discovered here, so a new task's kinds
are checked as soon as they declare ``corpus`` patterns (fnmatch on ``owner/repo/path`` of
/work/shared/tao_specs/MANIFEST.tsv). Each claimed file must load as its kind, and `taoctl spec
check`'s detection must pick that same kind from the file's content.
"""

from __future__ import annotations

import fnmatch
import importlib
from pathlib import Path

import pytest

from taoctl.engine import spec as specs
from taoctl.errors import SpecError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "tao_specs"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/tao_specs")
TASKS = Path(__file__).resolve().parent.parent / "src" / "taoctl" / "tasks"


def spec_modules():
    return [importlib.import_module(f"taoctl.tasks.{p.parent.name}.spec") for p in sorted(TASKS.glob("*/spec.py"))]


def corpus_files() -> list[str]:
    rows = [line.split("\t") for line in (CORPUS / "MANIFEST.tsv").read_text().splitlines() if line.strip()]
    return [f"{repo}/{path}" for repo, path, *_ in rows]


@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason=f"TAO spec corpus not present at {CORPUS}")
def test_every_claimed_corpus_file_loads():
    files = corpus_files()
    assert len(files) > 200, "MANIFEST.tsv looks truncated"
    seen_kinds: set[int] = set()
    rows, failures = [], []
    for module in spec_modules():
        task = module.__name__.split(".")[2]
        for kind in module.KINDS.values():
            if id(kind) in seen_kinds or not kind.corpus:
                continue  # a package re-exporting another's kinds: checked once
            seen_kinds.add(id(kind))
            claimed = [f for f in files if any(fnmatch.fnmatch(f, pattern) for pattern in kind.corpus)]
            ok = warned = 0
            for name in claimed:
                path = CORPUS / name
                warnings: list[str] = []
                try:
                    specs.load(path, kind, on_warning=warnings.append)
                except SpecError as exc:
                    failures.append(f"{task}/{kind.name}: {exc}")
                    continue
                detected = specs.detect_kind(path, module.KINDS)
                if detected is not kind:
                    failures.append(f"{task}/{kind.name}: {name} detected as "
                                    f"{detected.name if detected else 'no kind'}")
                    continue
                ok += 1
                warned += bool(warnings)
            rows.append((task, kind.name, len(claimed), ok, warned))
            if not claimed:
                failures.append(f"{task}/{kind.name}: corpus patterns {kind.corpus} match no file")
    table = [f"{'task':<20}{'kind':<20}{'files':>6}{'ok':>6}{'warned':>8}"]
    table += [f"{t:<20}{k:<20}{n:>6}{o:>6}{w:>8}" for t, k, n, o, w in rows]
    table.append(f"{'total':<40}{sum(r[2] for r in rows):>6}{sum(r[3] for r in rows):>6}{sum(r[4] for r in rows):>8}")
    print("\n" + "\n".join(table))
    assert rows, "no task declares spec kinds with corpus patterns"
    assert not failures, "\n".join(table + failures)
