"""Issue 20 point 7: a damaged result that Prefect's cache points to is recomputed and the registry repaired;
the check costs the same whatever the size of the job (issue 18)."""

import os
import re
import shutil

import pytest

from dode.core.grids import GridSpec
from dode.pipeline import steps
from dode.pipeline.generate import SamplingJob
from dode.store.lambdas import LAMBDAS_FILE
from dode.store.registry import Registry
from dode.store.samples import load_samples


def test_an_edited_lambdas_file_is_recomputed_and_repaired(prefect_harness, tmp_path):
    from dode_flows.stages import distill_flow

    common = {"config": {"model": "mixture-smooth", "solver": "euler", "nfe": 3,
                         "teacher": {"factor": 2, "n_samples": 16, "batch_size": 16}},
              "registry": str(tmp_path / "registry")}
    lam = distill_flow(**common)["lambdas"]
    stored = tmp_path / "registry" / "artifacts" / lam / "files" / LAMBDAS_FILE
    original = stored.read_bytes()
    os.chmod(stored, 0o644)
    stored.write_bytes(original.replace(b"0.", b"9.", 1))  # an edit: same manifest, other bytes
    assert Registry(common["registry"]).verify() != []
    assert distill_flow(**common)["lambdas"] == lam  # the cache is not trusted: recomputed, same content
    assert stored.read_bytes() == original and Registry(common["registry"]).verify() == []


def test_the_cache_check_of_a_sharded_job_reads_its_index_only(tmp_path, monkeypatch):
    """The cache key's cost does not grow with a job: trusting a cached samples id verifies the job's index
    artifact, not its chunks; a damaged chunk is refused when the samples are read."""
    from dode_flows.tasks import registry_holds

    uri = str(tmp_path / "registry")
    job = SamplingJob("mixture-smooth", "euler", GridSpec("karras", 3).to_dict(), None, 32, 0, 4).to_dict()
    for shard in range(4):
        steps.sample(uri, job, shard, 4)
    index = steps.gather_samples(uri, job)
    reg = Registry(uri)
    chunks = [a.id for a in reg.list("samples") if "images.npy" in a.files]
    assert len(chunks) == 8 and "images.npy" not in reg.get(index).files

    read = []
    load, problem = Registry.load, Registry.file_problem
    monkeypatch.setattr(Registry, "load", lambda self, id: read.append(id) or load(self, id))
    monkeypatch.setattr(Registry, "file_problem", lambda self, art, name: read.append(art.id) or problem(self, art, name))
    assert registry_holds(uri, index)
    assert set(read) == {index}  # whatever the number of chunks
    monkeypatch.undo()

    shutil.rmtree(tmp_path / "registry" / "artifacts" / chunks[3])
    steps.open_registry.cache_clear()
    assert registry_holds(uri, index)  # the cached index is still trusted ...
    with pytest.raises(ValueError, match=f"chunk {chunks[3][:12]} .* Rerun the sampling job to recompute it"):
        load_samples(Registry(uri), index)  # ... and reading the damaged job refuses it, saying how to mend it
    lines = []
    monkeypatch.setattr(steps.log, "info", lambda message, *args: lines.append(message % args))
    for shard in range(4):  # the rerun the message asks for: only the missing chunk is computed again
        steps.sample(uri, job, shard, 4)
    computed = [int(m) for m in re.findall(r"computed (\d+) chunk", "\n".join(lines))]
    assert sorted(computed) == [0, 0, 0, 1]
    assert load_samples(Registry(uri), index).shape == (32, 1, 8, 8) and Registry(uri).verify() == []
