"""The registry's key index (issue 18, item 4): find by kind and key, and lineage, without listing every manifest;
untrusted entries ignored and reported; registries written before the index still found, and reindexed."""

import hashlib
import shutil
from pathlib import Path

import pytest

from dode.cli import main
from dode.store.key_index import INDEX_FILE, entry_key
from dode.store.registry import Registry
from dode.store.storage import LocalStorage


class Spy(LocalStorage):
    """A local storage that records what it lists and reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, str(root))
        self.listed: list[str] = []
        self.read_keys: list[str] = []

    def listdir(self, key: str) -> list[str]:
        self.listed.append(key)
        return super().listdir(key)

    def read(self, key: str, limit: int = -1) -> bytes:
        self.read_keys.append(key)
        return super().read(key, limit)


def spied(root: Path) -> Registry:
    return Registry(root, storage=Spy(root))


@pytest.fixture
def filled(tmp_path):
    """A registry of 12 lambdas-like artifacts under 4 keys, each the parent of the next."""
    root = tmp_path / "registry"
    reg = Registry(root)
    arts, parent = [], []
    for i in range(12):
        art = reg.publish_json("lambdas", f"key-{i % 4}", {"i": i}, params={"i": i, "even": i % 2 == 0}, parents=parent)
        arts.append(art)
        parent = [art]
    return root, arts


def test_find_by_key_reads_only_the_manifests_the_index_names(filled):
    root, arts = filled
    reg = spied(root)
    hits = reg.find("lambdas", "key-1")
    assert [a.id for a in hits] == [arts[9].id, arts[5].id, arts[1].id]  # newest first
    assert "artifacts" not in reg.storage.listed
    manifests = {k for k in reg.storage.read_keys if k.endswith("manifest.json")}
    assert manifests == {f"artifacts/{a.id}/manifest.json" for a in hits}
    assert [a.id for a in reg.find("lambdas", "key-2", even=True)] == [arts[10].id, arts[6].id, arts[2].id]
    assert reg.find("lambdas", "key-2", even=False) == [] and reg.find("lambdas", "no-such-key") == []
    assert reg.find("score", "key-1") == []
    assert [a.id for a in reg.find("lambdas", i=3)] == [arts[3].id]  # without a key: every manifest, listed


def test_lineage_follows_parents_by_id(filled):
    root, arts = filled
    reg = spied(root)
    assert [a.id for a in reg.lineage(arts[11].id)] == [a.id for a in reversed(arts)]
    assert "artifacts" not in reg.storage.listed


def test_planted_index_entries_are_ignored_and_reported(filled):
    root, arts = filled
    prefix = root / Path(entry_key(arts[1])).parent  # key-1's entries
    (prefix / arts[2].id).write_bytes(b"")  # an artifact of another key
    (prefix / ("f" * 64)).write_bytes(b"")  # no such artifact
    (root / "index" / "lambdas" / "junk").write_bytes(b"")
    reg = Registry(root)
    assert [a.key for a in reg.find("lambdas", "key-1")] == ["key-1"] * 3
    problems = reg.verify()
    assert len(problems) == 3 and all("lookups ignore it" in p for p in problems)
    assert sum(f"names artifact {i[:12]}" in p for p in problems for i in (arts[2].id, "f" * 64)) == 2


def test_an_artifact_whose_entry_is_lost_is_reported_and_republishing_restores_it(filled):
    root, arts = filled
    (root / entry_key(arts[4])).unlink()
    reg = Registry(root)
    assert arts[4].id not in {a.id for a in reg.find("lambdas", "key-0")}
    assert [p for p in reg.verify() if arts[4].short in p] == [
        f"artifact {arts[4].short}: no key index entry (lookups by key miss it); run `dode artifacts reindex`"]
    again = reg.publish_json("lambdas", "key-0", {"i": 4}, params={"i": 4, "even": True}, parents=[arts[3]])
    assert again.id == arts[4].id and again.id in {a.id for a in Registry(root).find("lambdas", "key-0")}
    assert Registry(root).verify() == []


def test_a_registry_written_before_the_index_is_found_then_reindexed(filled, capsys):
    root, arts = filled
    shutil.rmtree(root / "index")  # as an older dode left it
    reg = spied(root)
    assert [a.id for a in reg.find("lambdas", "key-3")] == [arts[11].id, arts[7].id, arts[3].id]
    assert "artifacts" in reg.storage.listed  # found by listing every manifest
    late = reg.publish_json("lambdas", "key-3", {"i": 12})  # a new artifact in an old registry
    assert reg.find("lambdas", "key-3")[0].id == late.id
    problems = reg.verify()
    assert problems[0].startswith(f"index: no {INDEX_FILE}") and len(problems) == 1 + len(arts)
    assert main(["artifacts", "reindex", "--registry", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"{len(arts)} key index entries written")
    assert Registry(root).verify() == []
    reg = spied(root)
    assert [a.id for a in reg.find("lambdas", "key-3")] == [late.id, arts[11].id, arts[7].id, arts[3].id]
    assert "artifacts" not in reg.storage.listed
    assert main(["artifacts", "reindex", "--registry", str(root)]) == 0  # again: nothing to write
    assert capsys.readouterr().out.startswith("0 key index entries written")


def test_entries_are_named_by_kind_and_key_digest(filled):
    root, arts = filled
    digest = hashlib.sha256(b"key-0").hexdigest()
    assert sorted(p.name for p in (root / "index" / "lambdas" / digest).iterdir()) == sorted(
        a.id for a in arts if a.key == "key-0")
    assert (root / INDEX_FILE).is_file()
